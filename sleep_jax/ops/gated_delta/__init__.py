"""The gated delta rule: reference, chunked and Pallas implementations."""
