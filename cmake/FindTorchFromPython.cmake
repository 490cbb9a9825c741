# Locate the torch of the building interpreter and decide whether CUDA kernels
# are compiled. Sets TORCH_LIBRARIES and PYFLM_CUDA_ENABLED.
find_package(Python COMPONENTS Interpreter REQUIRED)

# Ask the *building* interpreter for its torch: scikit-build-core puts the
# target environment first on CMAKE_PREFIX_PATH, which can be a different torch.
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
    "import torch, torch.utils; print(torch.utils.cmake_prefix_path); print(int(torch.version.cuda is not None)); print(torch.__version__)"
  OUTPUT_VARIABLE _torch_info OUTPUT_STRIP_TRAILING_WHITESPACE
  RESULT_VARIABLE _torch_rc)
if(NOT _torch_rc EQUAL 0)
  message(FATAL_ERROR "pyflm: could not import torch with ${Python_EXECUTABLE}")
endif()
string(REPLACE "\n" ";" _torch_info "${_torch_info}")
list(GET _torch_info 0 _torch_prefix)
list(GET _torch_info 1 _torch_has_cuda)
list(GET _torch_info 2 PYFLM_TORCH_VERSION)
list(PREPEND CMAKE_PREFIX_PATH "${_torch_prefix}")
message(STATUS "pyflm: torch ${PYFLM_TORCH_VERSION} at ${_torch_prefix} (CUDA build: ${_torch_has_cuda})")

set(PYFLM_CUDA_ENABLED OFF)
if(PYFLM_WITH_CUDA AND _torch_has_cuda)
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(CMAKE_VERSION VERSION_LESS 3.26)
      message(WARNING "pyflm: CMake ${CMAKE_VERSION} cannot compile C++20 CUDA; building CPU only (pip install 'cmake>=3.26')")
    else()
      set(PYFLM_CUDA_ENABLED ON)
    endif()
  else()
    message(STATUS "pyflm: torch has CUDA but no nvcc was found; building CPU only")
  endif()
endif()

if(PYFLM_CUDA_ENABLED)
  enable_language(CUDA)
  set(CMAKE_CUDA_STANDARD 20)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  # Without this torch's config probes for a GPU; the machine may have none.
  string(REPLACE ";" " " _arch_dots "${PYFLM_CUDA_ARCHS}")
  string(REGEX REPLACE "([0-9])([0-9])" "\\1.\\2" _arch_dots "${_arch_dots}")
  set(ENV{TORCH_CUDA_ARCH_LIST} "${_arch_dots}")
  set(TORCH_CUDA_ARCH_LIST "${_arch_dots}")
  # The nvcc on PATH may be a wrapper script: name the real toolkit root.
  get_filename_component(_cuda_bin "${CMAKE_CUDA_COMPILER}" REALPATH)
  if(CMAKE_CUDA_COMPILER_TOOLKIT_ROOT)
    set(CUDA_TOOLKIT_ROOT_DIR "${CMAKE_CUDA_COMPILER_TOOLKIT_ROOT}")
  endif()
  # pip's CUDA torch ships CUDA libraries (nvrtc, cublas, ...) and headers
  # under site-packages/nvidia/*; the system toolkit may lack them.
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c
      "import os, glob, torch; r=os.path.join(os.path.dirname(os.path.dirname(torch.__file__)),'nvidia'); print(';'.join(sorted(glob.glob(os.path.join(r,'*','include'))+glob.glob(os.path.join(r,'*','*','include')))))"
    OUTPUT_VARIABLE _nv_includes OUTPUT_STRIP_TRAILING_WHITESPACE)
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c
      "import os, glob, torch; r=os.path.join(os.path.dirname(os.path.dirname(torch.__file__)),'nvidia'); print(';'.join(sorted(glob.glob(os.path.join(r,'**','libnvrtc.so*'),recursive=True))))"
    OUTPUT_VARIABLE _nvrtc OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(_nvrtc)
    list(GET _nvrtc 0 _nvrtc0)
    set(CUDA_NVRTC_LIB "${_nvrtc0}" CACHE FILEPATH "")
    set(CUDA_nvrtc_LIBRARY "${_nvrtc0}" CACHE FILEPATH "")
  endif()
  if(_nv_includes)
    include_directories(SYSTEM ${_nv_includes})
  endif()
endif()

# torch ignores (and warns about) CMAKE_CUDA_ARCHITECTURES; CMakeLists.txt sets
# the architectures on the target instead.
unset(CMAKE_CUDA_ARCHITECTURES)
find_package(Torch REQUIRED)
message(STATUS "pyflm: CUDA kernels: ${PYFLM_CUDA_ENABLED}")
