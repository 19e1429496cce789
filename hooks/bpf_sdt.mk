# bpf_sdt.mk: build BPF objects with probes from make.
#
#   BPF_SDT_OUTDIR := build       # before the include: rules expand when read
#   BPF_SDT_SOURCES := $(wildcard *.bpf.c)   # likewise (compile_commands.json)
#   include $(or $(shell bpf-sdt makefile),$(error bpf-sdt not found on PATH))
#   all: $(BPF_SDT_OUTDIR)/prog.bpf.o
#   $(BPF_SDT_OUTDIR)/multi.bpf.o: $(BPF_SDT_OUTDIR)/a.bpf.o $(BPF_SDT_OUTDIR)/b.bpf.o
#   	$(bpf_sdt_link)
#
# Provides: the -I flag of the installed bpf_sdt.h and the system include
# directory `clang -target bpf` misses (BPF_SDT_CFLAGS, from `bpf-sdt cflags
# --system`); the clang `bpf-sdt instrument` uses (BPF_CLANG, from `bpf-sdt
# clang`: $BPF_CLANG, clang, else the newest clang-N); a pattern rule
# building $(BPF_SDT_OUTDIR)/%.bpf.o from %.bpf.c with dependency files, whose
# output only appears once `bpf-sdt check` passed on it (a broken note fails
# the build); `bpf_sdt_link`, a recipe linking the prerequisites with
# `bpf-sdt link`; and a compile_commands.json rule for `bpf-sdt lint -p`.
# Everything is incremental: a second `make` does nothing, and a changed
# compile command (flags, compiler) rebuilds the objects it changes.
#
# Warnings: BPF_WARNINGS (-Wall -Wextra -Werror) for every source, plus
# BPF_PROG_WARNINGS (-Wno-unused-parameter) for sources that use libbpf's
# BPF_PROG(), as observers do: its wrapper keeps a `ctx` parameter the body
# rarely uses, and -Wextra reports it.
#
# The include turns on .SECONDEXPANSION (the rebuild-on-flag-change check
# needs the includer's final variables); a `$$` in the prerequisites of the
# includer's later rules is then expanded a second time.

_bpf_sdt_default_goal := $(.DEFAULT_GOAL)

BPF_SDT	?= bpf-sdt
ifeq ($(shell command -v $(firstword $(BPF_SDT)) 2>/dev/null),)
$(error $(BPF_SDT) not found: install bpf-sdt (pip install bpf-sdt) and put it on PATH, or set BPF_SDT)
endif
# Computed once (not `?=`, which would run bpf-sdt at every expansion).
ifeq ($(origin BPF_CLANG),undefined)
BPF_CLANG	:= $(shell $(BPF_SDT) clang)
endif
ifeq ($(BPF_CLANG),)
$(error no clang for BPF (see the line above): install clang (Debian: clang-19) or set BPF_CLANG)
endif
BPF_SDT_OUTDIR	?= .
BPF_SDT_CFLAGS	:= $(shell $(BPF_SDT) cflags --system)
BPF_CFLAGS	?= -O2 -g
BPF_WARNINGS	?= -Wall -Wextra -Werror
BPF_PROG_WARNINGS	?= -Wno-unused-parameter
BPF_TARGET	?= -target bpf
BPF_SDT_SOURCES	?=

_bpf_sdt_sh = '$(subst ','\'',$(1))'
# Whether source $(1) uses BPF_PROG() or BPF_PROG2() (an observer, a tp_btf
# program).  The pattern is a variable: make would count its parenthesis.
# Each source is read once per make run (the answer is kept in a variable
# named after it): the stamps, the recipes and compile_commands.json all ask.
_bpf_sdt_bpf_prog_re := 'BPF_PROG2?[[:space:]]*[(]'
_bpf_sdt_grep_bpf_prog = $(if $(shell grep -lE $(_bpf_sdt_bpf_prog_re) $(call _bpf_sdt_sh,$(1)) 2>/dev/null),yes,no)
_bpf_sdt_uses_bpf_prog = $(filter yes,$(or $(_bpf_sdt_prog.$(1)),$(eval _bpf_sdt_prog.$(1) := \
	$(call _bpf_sdt_grep_bpf_prog,$(1)))$(_bpf_sdt_prog.$(1))))
# The compile command for source $(1), defined once: the recipe, the flags
# stamp and compile_commands.json all use it.  BPF_PROG_WARNINGS a project
# already passes to every source are not repeated, so such a project's sources
# keep one command line (and lint can compile them together).
_bpf_sdt_prog_warnings = $(filter-out $(BPF_CFLAGS) $(BPF_WARNINGS) $(BPF_EXTRA_CFLAGS),$(BPF_PROG_WARNINGS))
_bpf_sdt_cc = $(BPF_CLANG) $(BPF_TARGET) $(BPF_CFLAGS) $(BPF_WARNINGS) \
	$(if $(call _bpf_sdt_uses_bpf_prog,$(1)),$(_bpf_sdt_prog_warnings)) $(BPF_SDT_CFLAGS) $(BPF_EXTRA_CFLAGS)

# $(1).cmd holds the command object $(1) was built with from source $(2).
# Expanded as a prerequisite (second expansion, after every makefile is read):
# when the command differs, the file is rewritten, so it is newer than the
# object and the object rebuilds; when it is the same, nothing is written
# (`make -q` stays exact).  Two strings are equal when each contains the other;
# what is read is stripped (make 4.3 does not always drop the final newline).
_bpf_sdt_same = $(and $(findstring $(1),$(2)),$(findstring $(2),$(1)))
_bpf_sdt_stamp = $(strip $(if $(call _bpf_sdt_same,$(strip $(file <$(1:.o=.cmd))),$(strip $(call _bpf_sdt_cc,$(2)))),,\
	$(shell mkdir -p $(call _bpf_sdt_sh,$(dir $(1))))$(file >$(1:.o=.cmd),$(strip $(call _bpf_sdt_cc,$(2)))))\
	$(1:.o=.cmd))

.SECONDEXPANSION:
# The stamp is written while make expands the prerequisites, after make has
# read the directory: an empty rule tells make the file may appear, and
# .PRECIOUS keeps it (it would otherwise be an intermediate of the chain).
$(BPF_SDT_OUTDIR)/%.bpf.cmd: ;
.PRECIOUS: $(BPF_SDT_OUTDIR)/%.bpf.cmd

# Compile to a temporary, check it, then move it into place: the object never
# exists unless its notes are well-formed.
$(BPF_SDT_OUTDIR)/%.bpf.o: %.bpf.c $$(call _bpf_sdt_stamp,$$@,$$*.bpf.c)
	@mkdir -p $(@D)
	$(call _bpf_sdt_cc,$<) -MMD -MP -MF $(@:.o=.d) -MT $@ -c $< -o $@.tmp
	$(BPF_SDT) check $@.tmp || { rm -f $@.tmp; exit 1; }
	@mv $@.tmp $@

# Recipe for a multi-object program: $(bpf_sdt_link) links $^ into $@.
define bpf_sdt_link
	$(BPF_SDT) link -o $@ $^
	$(BPF_SDT) check $@
endef

# Dependency files of what was built so far: sources in subdirectories put
# theirs in the same subdirectories of BPF_SDT_OUTDIR.
_bpf_sdt_depfiles = $(BPF_SDT_OUTDIR)/*.bpf.d $(BPF_SDT_OUTDIR)/*/*.bpf.d $(BPF_SDT_OUTDIR)/*/*/*.bpf.d \
	$(patsubst %.c,$(BPF_SDT_OUTDIR)/%.d,$(BPF_SDT_SOURCES))
-include $(sort $(wildcard $(_bpf_sdt_depfiles)))

# compile_commands.json for `bpf-sdt lint -p $(BPF_SDT_OUTDIR)`; lists
# $(BPF_SDT_SOURCES) with the flags the pattern rule uses.  Paths are
# absolute and single-quoted in "command" (a source directory may hold
# spaces or quotes), then JSON-escaped; the flags stay shell text, as in the
# recipe.  $(file) runs while make expands the recipe, before any recipe
# line, so the directory is made in the same expansion, just before it.
_bpf_sdt_comma := ,
_bpf_sdt_json = $(subst ",\",$(subst \,\\,$(1)))
_bpf_sdt_entry = {"directory": "$(call _bpf_sdt_json,$(CURDIR))", "file": "$(call _bpf_sdt_json,$(abspath $(1)))", "command": "$(call _bpf_sdt_json,$(strip $(call _bpf_sdt_cc,$(1))) -c $(call _bpf_sdt_sh,$(abspath $(1))))"}
# It follows the makefiles (not the .d files among them, which every compile
# rewrites), the sources, and each source's command stamp.
_bpf_sdt_source_stamps = $(foreach s,$(BPF_SDT_SOURCES),$(call _bpf_sdt_stamp,$(BPF_SDT_OUTDIR)/$(s:.c=.o),$(s)))
$(BPF_SDT_OUTDIR)/compile_commands.json: $(filter-out %.d,$(MAKEFILE_LIST)) $(BPF_SDT_SOURCES) $$(_bpf_sdt_source_stamps)
	$(shell mkdir -p $(call _bpf_sdt_sh,$(@D)))$(file >$@,[$(subst } {,}$(_bpf_sdt_comma) {,$(foreach s,$(BPF_SDT_SOURCES),$(call _bpf_sdt_entry,$(s))))])
	@test -s $@

# Including this file must not change the includer's default goal.
.DEFAULT_GOAL := $(_bpf_sdt_default_goal)
