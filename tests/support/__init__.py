"""What the tests share: launching ranks and reading their output (launch), a run's checkpoint,
parameters and losses and the reference runs (runs), the local SLURM test cluster (cluster) and submitting to it (slurm), the
elastic job builder (elastic), the fault kit (faults), reading /proc (procs), waiting on progress
(progress), the README's validation split (split) and generated text (text). Test modules import
helpers from here, never from each other; tests/conftest.py holds only the fixtures."""
