// Used only by scripts/install.sh when Horovod is built with NCCL against a CPU-only torch
// (HVDLM_NCCL=1 on a machine without a GPU, to prove the build): torch's CPU wheel has the c10/cuda
// headers but not libc10_cuda.so, so the three c10::cuda functions Horovod's torch binding
// references are defined here. They are reached only for CUDA tensors, which a CPU torch cannot make.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

namespace c10 {
namespace cuda {

CUDAStream getCurrentCUDAStream(DeviceIndex) {
  TORCH_CHECK(false, "Horovod: CUDA stream requested, but this torch is a CPU build");
}

cudaStream_t CUDAStream::stream() const {
  TORCH_CHECK(false, "Horovod: CUDA stream requested, but this torch is a CPU build");
}

void c10_cuda_check_implementation(const int32_t err, const char* filename, const char* function_name,
                                   const uint32_t line_number, const bool) {
  if (err == static_cast<int32_t>(cudaSuccess)) return;
  TORCH_CHECK(false, "CUDA error ", cudaGetErrorString(static_cast<cudaError_t>(err)), " at ", filename, ":",
              line_number, " (", function_name, ")");
}

}  // namespace cuda
}  // namespace c10
