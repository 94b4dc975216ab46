# Fails if a per-ISA kernel object defines a global or weak symbol outside
# fastoptim::kernels::<isa>, or has a static initializer. An inline function compiled with
# wide-ISA flags and left global could be picked by the linker for baseline code: a SIGILL on
# older CPUs. Usage:
#   cmake -DNM=<nm> -DISA=<level> -DOBJECTS=<obj>[|<obj>...] [-DSANITIZE=<list>]
#         [-DTABLE=<name>] -P check_kernel_symbols.cmake
# TABLE: the table the objects must define in the namespace (default kTable, the kernels';
# the bench's roofline objects define kRooflineTable).
# With SANITIZE (the build's FASTOPTIM_SANITIZE), what the sanitizers insert is accepted: their
# module constructors and destructors, `__asan_*`/`__ubsan_*`/`__sanitizer_*` names, ASan's
# ODR indicators of our own globals (`__odr_asan.<symbol>`, Clang `__odr_asan_gen_<symbol>`),
# the personality-routine pointer of the unwind tables the instrumentation adds, and the
# type_info of function types (`_ZTIF...`, `_ZTSF...`) Clang's -fsanitize=function emits. None
# of them is code compiled with the ISA's flags that the linker could pick for baseline code.
foreach(var NM ISA OBJECTS)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "check_kernel_symbols: -D${var}=... is required")
  endif()
endforeach()

if(NOT DEFINED TABLE OR "${TABLE}" STREQUAL "")
  set(TABLE kTable)
endif()
string(LENGTH "${TABLE}" table_length)
string(REPLACE "|" ";" objects "${OBJECTS}")
string(LENGTH "${ISA}" isa_length)
# Itanium mangling of the namespace prefix; optional special-name prefixes (guard variables,
# TLS wrappers) keep the symbol inside the namespace.
set(namespace_prefix "N9fastoptim7kernels${isa_length}${ISA}")
set(sanitized FALSE)
if(DEFINED SANITIZE AND NOT "${SANITIZE}" STREQUAL "")
  set(sanitized TRUE)
endif()
set(bad "")
set(seen_table FALSE)
foreach(object IN LISTS objects)
  execute_process(COMMAND "${NM}" --defined-only "${object}"
    OUTPUT_VARIABLE listing ERROR_VARIABLE errors RESULT_VARIABLE status)
  if(NOT status EQUAL 0)
    message(FATAL_ERROR "check_kernel_symbols: ${NM} failed on ${object}: ${errors}")
  endif()
  string(REPLACE "\n" ";" lines "${listing}")
  foreach(line IN LISTS lines)
    if(NOT line MATCHES "^[0-9A-Fa-f]* *([A-Za-z?]) (.+)$")
      continue()
    endif()
    set(type "${CMAKE_MATCH_1}")
    set(name "${CMAKE_MATCH_2}")
    if(name MATCHES "^__Z")  # Mach-O adds an underscore to every C/C++ symbol
      string(SUBSTRING "${name}" 1 -1 name)
    endif()
    if(sanitized)
      # GCC's ASan constructor/destructor (priority 99), Clang's asan.module_ctor/dtor.
      if(name MATCHES "^(_GLOBAL_)?_sub_[ID]_00099_" OR name MATCHES "^(asan|ubsan|tsan|msan)\\.module_(ctor|dtor)")
        continue()
      endif()
      if(name MATCHES "^_?__(asan|ubsan|sanitizer)_" OR name MATCHES "^\\.?L?_?__asan_gen_"
         OR name STREQUAL "DW.ref.__gxx_personality_v0")
        continue()
      endif()
      # Clang's -fsanitize=function: the type_info (and its name) of each function type called
      # through a pointer, weak data that the checks compare, not code.
      if(name MATCHES "^_ZT[IS]F")
        continue()
      endif()
      # An ODR indicator names the global it guards: that global must pass the check itself.
      if(name MATCHES "^__odr_asan(\\.|_gen_)(.+)$")
        set(name "${CMAKE_MATCH_2}")
      endif()
    endif()
    if(name MATCHES "_GLOBAL__sub_I|_GLOBAL__I_")
      list(APPEND bad "${object}: static initializer ${name}")
      continue()
    endif()
    # Global: upper-case types; weak and unique: v, w, u. Lower-case others are local.
    if(NOT type MATCHES "^[A-TV-Zuvw]$")
      continue()
    endif()
    if(name MATCHES "^_Z(GV|TH|TW)?${namespace_prefix}")
      if(name STREQUAL "_Z${namespace_prefix}${table_length}${TABLE}E")
        set(seen_table TRUE)
      endif()
      continue()
    endif()
    list(APPEND bad "${object}: ${type} ${name}")
  endforeach()
endforeach()

if(bad)
  list(JOIN bad "\n  " bad_lines)
  message(FATAL_ERROR "symbols outside fastoptim::kernels::${ISA}:\n  ${bad_lines}")
endif()
if(NOT seen_table)
  message(FATAL_ERROR "fastoptim::kernels::${ISA}::${TABLE} not found: is this a ${ISA} kernel object?")
endif()
message(STATUS "${ISA}: every global symbol is inside fastoptim::kernels::${ISA}")
