# CUDA architectures from the nvcc version (included by CMakeLists.txt; tested in script
# mode by tests/python/test_build_config.py).
#
#   edgeuad_default_cuda_archs(<nvcc version> <out>)      the default list this nvcc can build
#   edgeuad_check_cuda_archs(<nvcc version> <archs>)       FATAL_ERROR naming an arch it cannot build
#
# Defaults: CUDA >= 11.8: 80;86;87;89;90 (Ampere, Jetson Orin, Ada, Hopper; PTX of the last for newer
# GPUs).  11.4-11.7 (JetPack 5): 72;80;86;87 (Xavier, Orin; 89/90 need 11.8).  11.1-11.3: 72;75;80;86.
# Older nvcc is refused.
function(edgeuad_default_cuda_archs version out)
  if(version VERSION_GREATER_EQUAL 11.8)
    set(_a 80 86 87 89 90)
  elseif(version VERSION_GREATER_EQUAL 11.4)
    set(_a 72 80 86 87)
  elseif(version VERSION_GREATER_EQUAL 11.1)
    set(_a 72 75 80 86)
  else()
    message(FATAL_ERROR "edgeuad needs nvcc >= 11.1 for its CUDA kernels, found ${version} "
                        "(or build without CUDA: EDGEUAD_CUDA=OFF)")
  endif()
  set(${out} "${_a}" PARENT_SCOPE)
endfunction()

function(edgeuad_check_cuda_archs version archs)
  # Highest SM each nvcc release can compile; lowest SM it still supports.
  if(version VERSION_GREATER_EQUAL 12.8)
    set(_max 121)
  elseif(version VERSION_GREATER_EQUAL 11.8)
    set(_max 90)
  elseif(version VERSION_GREATER_EQUAL 11.4)
    set(_max 87)
  elseif(version VERSION_GREATER_EQUAL 11.1)
    set(_max 86)
  else()
    set(_max 80)
  endif()
  if(version VERSION_GREATER_EQUAL 13.0)
    set(_min 75)  # CUDA 13 dropped Maxwell, Pascal and Volta (offline compilation)
  elseif(version VERSION_GREATER_EQUAL 12.0)
    set(_min 50)
  else()
    set(_min 35)
  endif()
  foreach(_arch IN LISTS archs)
    string(REGEX REPLACE "-(real|virtual)$" "" _num "${_arch}")
    string(REGEX REPLACE "[af]$" "" _num "${_num}")
    if(NOT _num MATCHES "^[0-9]+$")
      message(FATAL_ERROR "EDGEUAD_CUDA_ARCHS: '${_arch}' is not an SM number like 87")
    endif()
    if(_num GREATER _max OR _num LESS _min)
      message(FATAL_ERROR "EDGEUAD_CUDA_ARCHS: nvcc ${version} cannot compile sm_${_num} (it supports "
                          "sm_${_min} to sm_${_max}); drop it or use another CUDA toolkit")
    endif()
  endforeach()
endfunction()
