# A generator folder whose sampling defaults name a guide model (autoguidance) through the CLI:
# `stipple export` copies the guide's folder with the generator's, `stipple info` names it, and
# a generated PNG's parameters say it guided. SRC is a tiny generator folder (stipple export's),
# used as both the generator and its guide; WORK is emptied first.
# cmake -DSTIPPLE=<stipple> -DSRC=<folder> -DWORK=<folder> -P cli_export_guided.cmake
file(REMOVE_RECURSE ${WORK})
file(COPY ${SRC}/ DESTINATION ${WORK}/guided)
file(COPY ${SRC}/ DESTINATION ${WORK}/guided/guide)
file(READ ${WORK}/guided/model_index.json index)
string(JSON index SET "${index}" "_stipple_sampling" "{\"cfg\": 3, \"guide_model\": \"guide\"}")
file(WRITE ${WORK}/guided/model_index.json "${index}")

function(run what)
  execute_process(COMMAND ${STIPPLE} ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out
                  ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (exit ${rc}): ${err}")
  endif()
  set(out "${out}" PARENT_SCOPE)
endfunction()

run("export" export ${WORK}/guided --out ${WORK}/out --dtype f16)
message("${out}")
foreach(f model_index.json transformer/diffusion_pytorch_model.safetensors
          scheduler/scheduler_config.json)
  if(NOT EXISTS ${WORK}/out/guide/${f})
    message(FATAL_ERROR "export left out the guide model's ${f}")
  endif()
endforeach()
run("info" info ${WORK}/out)
if(NOT out MATCHES "autoguidance by guide")
  message(FATAL_ERROR "stipple info does not name the guide model: ${out}")
endif()
run("generate" generate --model ${WORK}/out --class-label bag --steps 2 --out ${WORK}/bag.png
    --quiet)
run("info of the image" info ${WORK}/bag.png)
if(NOT out MATCHES "Guide model: guide")
  message(FATAL_ERROR "the PNG's parameters do not say the guide model: ${out}")
endif()
run("generate without" generate --model ${WORK}/out --class-label bag --steps 2
    --out ${WORK}/bag-plain.png --no-autoguidance --quiet)
run("info of the image" info ${WORK}/bag-plain.png)
if(out MATCHES "Guide model")
  message(FATAL_ERROR "--no-autoguidance still guided by the guide model: ${out}")
endif()
message("guided export: ok")
