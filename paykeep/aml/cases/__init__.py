"""AML cases: state machine, evidence, notes, decision trail, suspicious activity reports."""
