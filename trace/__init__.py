"""`bpf-sdt trace`: run or attach an instrumented program and show its probes firing."""
