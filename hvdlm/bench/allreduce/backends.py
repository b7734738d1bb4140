"""The backends: each binds a buffer to a zero-argument call that runs one synchronous allreduce
(Horovod, torch.distributed, mpi4py) or, for the one-host roofline, one copy (memcpy)."""

from __future__ import annotations

import os
from typing import Callable

import torch

from hvdlm.bench.allreduce.bandwidth import DTYPES
from hvdlm.units import bus_factor


class Backend:
    name = ""
    op = "sum"
    transport = ""
    label = ""

    def supports(self, dtype: str) -> bool:
        return True

    def bind(self, buf: torch.Tensor, out: torch.Tensor | None, key: str) -> Callable[[], torch.Tensor]:
        raise NotImplementedError

    def bus_factor(self, nranks: int) -> float:
        return bus_factor(nranks)

    def close(self) -> None:
        pass


class HorovodBackend(Backend):
    name = "horovod"

    def __init__(self, hvd, device: torch.device):
        import horovod

        self.hvd = hvd
        self.controller = "Gloo" if hvd.gloo_enabled() else "MPI" if hvd.mpi_enabled() else "unknown"
        if device.type == "cuda" and hvd.nccl_built():
            self.ops = "NCCL"
        else:
            ops = os.environ.get("HOROVOD_CPU_OPERATIONS", "").strip().lower()
            self.ops = {"mpi": "MPI", "gloo": "Gloo", "ccl": "CCL"}.get(ops, self.controller)
        self.transport = self.ops if self.ops == self.controller else f"{self.ops} ops, {self.controller} controller"
        self.label = f"horovod ({self.transport})"
        self.version = horovod.__version__
        self._supported: dict[str, bool] = {}
        self._device = device

    def supports(self, dtype: str) -> bool:
        """Horovod 0.28 rejects bf16 in Python, before anything is sent, on every rank alike."""
        if dtype not in self._supported:
            try:
                self.hvd.allreduce(torch.zeros(1, dtype=DTYPES[dtype], device=self._device),
                                   op=self.hvd.Sum, name=f"hvdlm.bench.probe.{dtype}")
                self._supported[dtype] = True
            except (ValueError, TypeError, RuntimeError):
                self._supported[dtype] = False
        return self._supported[dtype]

    def bind(self, buf, out, key):
        hvd = self.hvd
        if out is None:
            return lambda: hvd.allreduce_(buf, op=hvd.Sum, name=key)
        # Horovod's out-of-place allreduce allocates its output; there is no preallocated form.
        return lambda: hvd.allreduce(buf, op=hvd.Sum, name=key)


class TorchBackend(Backend):
    def __init__(self, dist, backend: str):
        self.dist = dist
        self.name = f"torch-{backend}"
        self.transport = backend
        self.label = f"torch.distributed ({backend})"

    def bind(self, buf, out, key):
        dist = self.dist
        if out is None:
            def run():
                dist.all_reduce(buf)
                return buf
        else:  # torch.distributed has no out-of-place allreduce: copy, then reduce in place
            def run():
                out.copy_(buf)
                dist.all_reduce(out)
                return out
        return run

    def close(self):
        if self.dist.is_initialized():
            self.dist.destroy_process_group()


class Mpi4pyBackend(Backend):
    name = "mpi4py"

    def __init__(self, MPI, beside_horovod: bool = False):
        import mpi4py

        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        library = MPI.Get_library_version().strip().splitlines()[0]
        self.library = library.split(",")[0].strip()
        self.transport = self.library
        self.label = f"mpi4py ({self.library})"
        if beside_horovod:  # the same calls while Horovod's background thread cycles
            self.name = "mpi4py-hvd"
            self.label = f"mpi4py beside Horovod ({self.library})"
        self.version = mpi4py.__version__
        # MPI has no 16-bit float type (Open MPI 4): send the bits as uint16 and add them with a
        # user-defined op, which is what Horovod's MPI path does for fp16 too (in C, not Python).
        self.types = {torch.float32: (MPI.FLOAT, MPI.SUM, None)}
        self._user_ops = []
        for dtype in (torch.float16, torch.bfloat16):
            op = MPI.Op.Create(self._adder(dtype), commute=True)
            self._user_ops.append(op)
            self.types[dtype] = (MPI.UINT16_T, op, torch.uint16)

    @staticmethod
    def _adder(dtype: torch.dtype):
        def add(inbuf, inoutbuf, _datatype):
            dst = torch.frombuffer(inoutbuf, dtype=dtype)
            dst.add_(torch.frombuffer(inbuf, dtype=dtype))
        return add

    def bind(self, buf, out, key):
        MPI, comm = self.MPI, self.comm
        mpitype, op, view = self.types[buf.dtype]

        def numpy(t):
            return (t if view is None else t.view(view)).numpy()

        send = [numpy(buf), mpitype]
        if out is None:
            def run():
                comm.Allreduce(MPI.IN_PLACE, send, op=op)
                return buf
        else:
            recv = [numpy(out), mpitype]

            def run():
                comm.Allreduce(send, recv, op=op)
                return out
        return run

    def close(self):
        for op in self._user_ops:
            op.Free()
        self._user_ops = []


class MemcpyBackend(Backend):
    name = "memcpy"
    op = "copy"
    transport = "copy_"
    label = "memcpy (every rank at once)"

    def bind(self, buf, out, key):
        dst = out if out is not None else torch.empty_like(buf)
        return lambda: dst.copy_(buf)

    def bus_factor(self, nranks: int) -> float:
        return 1.0  # bytes copied per second by one rank
