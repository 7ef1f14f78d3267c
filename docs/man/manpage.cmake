# cmake -DIN=page.in -DOUT=page -DVERSION=x.y.z [-DCERTMAPD=path/to/certmapd] -P manpage.cmake
#
# Fills in a manual page template: @CERTMAPD_VERSION@, @CERTMAPD_DATE@ (from
# SOURCE_DATE_EPOCH when set, so that package builds are reproducible) and,
# with CERTMAPD, @CERTMAPD_KEYS@ from `certmapd --help-config=man`: the page's
# key list comes from the key table itself.
foreach(v IN ITEMS IN OUT VERSION)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "manpage.cmake: -D${v}= is required")
  endif()
endforeach()
set(CERTMAPD_VERSION ${VERSION})
string(TIMESTAMP CERTMAPD_DATE "%Y-%m-%d" UTC)
set(CERTMAPD_KEYS "")
if(DEFINED CERTMAPD)
  execute_process(COMMAND ${CERTMAPD} --help-config=man
    OUTPUT_VARIABLE CERTMAPD_KEYS RESULT_VARIABLE rc ERROR_VARIABLE err)
  if(NOT rc EQUAL 0 OR CERTMAPD_KEYS STREQUAL "")
    message(FATAL_ERROR "manpage.cmake: ${CERTMAPD} --help-config=man failed (${rc}): ${err}")
  endif()
  string(REGEX REPLACE "\n$" "" CERTMAPD_KEYS "${CERTMAPD_KEYS}")
endif()
configure_file(${IN} ${OUT}.tmp @ONLY)
file(RENAME ${OUT}.tmp ${OUT})
