"""What the tests share: launching ranks (launch), the local SLURM test cluster (cluster), the
elastic job builder (elastic), the fault kit (faults), reading /proc (procs) and waiting on
progress (progress). tests/conftest.py holds only the fixtures and imports from here."""
