# Runs CMD with ARGS (a ;-list) and prints "exit N: <stderr>", so a ctest can check both the exit
# status and the one error line (PASS_REGULAR_EXPRESSION "exit 1: stipple: error: ...").
execute_process(COMMAND ${CMD} ${ARGS} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message("exit ${rc}: ${err}")
