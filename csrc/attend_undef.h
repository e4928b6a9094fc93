/* attend_undef.h -- clears the instruction-set parameters of the attend.h template (model.c,
 * after an instruction set's instances). */
#undef ZP_ATT_TARGET
#undef ZP_ATT_V
#undef ZP_ATT_W
#undef ZP_ATT_VI
#undef ZP_ATT_VEXP
#undef ZP_ATT_LOAD
#undef ZP_ATT_SLANES
