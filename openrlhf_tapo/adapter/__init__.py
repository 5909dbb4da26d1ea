"""Everything that touches OpenRLHF: stage/ (what its trainer runs of ours), seam/ (where we replace or borrow its
internals at run time), checks/ (the launcher's preflight), inprocess/ (the in-process driver), run_spec.py."""
