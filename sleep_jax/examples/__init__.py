"""Example models built on the library's public pieces (see ``own_model``)."""
