"""launch/benchmarks/train.py: the trace arithmetic and op attribution (fast), and one quick run (slow)."""
import pytest

from launch.benchmarks import train as bench


def test_self_times_subtract_nested_events_per_thread():
  # Thread 1: A [0, 10) holds B [2, 5) and C [5, 7); thread 2: D [1, 4) alone
  # (another thread's events never nest into A).
  events = [{"name": "A", "ts": 0.0, "dur": 10.0, "pid": 1, "tid": 1},
            {"name": "C", "ts": 5.0, "dur": 2.0, "pid": 1, "tid": 1},
            {"name": "B", "ts": 2.0, "dur": 3.0, "pid": 1, "tid": 1},
            {"name": "D", "ts": 1.0, "dur": 3.0, "pid": 1, "tid": 2}]
  assert sorted(bench._self_times(events)) == [("A", 5.0), ("B", 3.0), ("C", 2.0), ("D", 3.0)]


def test_categorise_takes_the_innermost_known_frame():
  gdn = ("/x/sleep_jax/ops/gated_delta/chunked.py", 10)
  norm = ("/x/sleep_jax/nn/norms.py", 5)
  model = ("/x/sleep_jax/model.py", 7)
  assert bench.categorise([gdn, model]) == "GDN"
  assert bench.categorise([norm, model]) == "embed/head/norms/res"  # a norm counts towards its caller
  assert bench.categorise([("/x/sleep_jax/windowed.py", 3), model]) == "loss + window loop"
  assert bench.categorise([("/elsewhere.py", 1)]) == bench.OTHER


def test_instruction_categories_follow_fusions_to_their_frames():
  hlo = """HloModule m

%fused_computation (p: f32[2]) -> f32[2] {
  %p = f32[2]{0} parameter(0)
  ROOT %t = f32[2]{0} tanh(f32[2]{0} %p), metadata={op_name="tanh" stack_frame_id=2}
}

ENTRY %main (a: f32[2]) -> f32[2] {
  %a = f32[2]{0} parameter(0)
  %d = f32[2]{0} multiply(f32[2]{0} %a, f32[2]{0} %a), metadata={op_name="mul" stack_frame_id=1}
  ROOT %fusion = f32[2]{0} fusion(f32[2]{0} %d), kind=kLoop, calls=%fused_computation
}

FileNames
1 "/x/sleep_jax/nn/mlp.py"
2 "/x/sleep_jax/nn/attention.py"

FunctionNames
1 "f"

FileLocations
1 {file_name_id=1 function_name_id=1 line=3 end_line=3 column=1 end_column=2}
2 {file_name_id=2 function_name_id=1 line=4 end_line=4 column=1 end_column=2}

StackFrames
1 {file_location_id=1 parent_frame_id=0}
2 {file_location_id=2 parent_frame_id=0}
"""
  cats = bench.instruction_categories(hlo)
  assert cats["d"] == "MLP" and cats["fusion"] == "attention" and cats["t"] == "attention"


@pytest.mark.slow
def test_quick_benchmark_prints_ratios_and_breakdown(capsys):
  assert bench.main(["--quick", "--preset=", "--batch_size=4"]) == 0
  out = capsys.readouterr().out
  assert "targets: hybrid N=1 tokens/s vs transformer" in out and "where the step's time goes" in out
  assert "GDN" in out and "device total" in out
