# bpf_sdt.mk: build BPF objects with probes from make.
#
#   BPF_SDT_OUTDIR := build       # before the include: rules expand when read
#   BPF_SDT_SOURCES := $(wildcard *.bpf.c)   # likewise (compile_commands.json)
#   include $(shell bpf-sdt makefile)
#   all: $(BPF_SDT_OUTDIR)/prog.bpf.o
#   $(BPF_SDT_OUTDIR)/multi.bpf.o: $(BPF_SDT_OUTDIR)/a.bpf.o $(BPF_SDT_OUTDIR)/b.bpf.o
#   	$(bpf_sdt_link)
#
# Provides: the -I flag of the installed bpf_sdt.h (BPF_SDT_CFLAGS); a pattern
# rule building $(BPF_SDT_OUTDIR)/%.bpf.o from %.bpf.c with dependency files,
# whose output only appears once `bpf-sdt check` passed on it (a broken note
# fails the build); `bpf_sdt_link`, a recipe linking the prerequisites with
# `bpf-sdt link`; and a compile_commands.json rule for `bpf-sdt lint -p`.
# Everything is incremental: a second `make` does nothing.

_bpf_sdt_default_goal := $(.DEFAULT_GOAL)

BPF_SDT	?= bpf-sdt
BPF_CLANG	?= clang
BPF_SDT_OUTDIR	?= .
BPF_SDT_CFLAGS	:= $(shell $(BPF_SDT) cflags)
BPF_CFLAGS	?= -O2 -g -Wall -Wextra -Werror
BPF_TARGET	?= -target bpf
BPF_SDT_SOURCES	?=

# Compile to a temporary, check it, then move it into place: the object never
# exists unless its notes are well-formed.
$(BPF_SDT_OUTDIR)/%.bpf.o: %.bpf.c
	@mkdir -p $(@D)
	$(BPF_CLANG) $(BPF_TARGET) $(BPF_CFLAGS) $(BPF_SDT_CFLAGS) $(BPF_EXTRA_CFLAGS) \
		-MMD -MP -MF $(@:.o=.d) -MT $@ -c $< -o $@.tmp
	$(BPF_SDT) check $@.tmp || { rm -f $@.tmp; exit 1; }
	@mv $@.tmp $@

# Recipe for a multi-object program: $(bpf_sdt_link) links $^ into $@.
define bpf_sdt_link
	$(BPF_SDT) link -o $@ $^
	$(BPF_SDT) check $@
endef

-include $(wildcard $(BPF_SDT_OUTDIR)/*.bpf.d)

# compile_commands.json for `bpf-sdt lint -p $(BPF_SDT_OUTDIR)`; lists
# $(BPF_SDT_SOURCES) with the flags the pattern rule uses.  Paths are
# absolute and single-quoted in "command" (a source directory may hold
# spaces or quotes), then JSON-escaped; the flags stay shell text, as in the
# recipe.  $(file) runs while make expands the recipe, before any recipe
# line, so the directory is made in the same expansion, just before it.
_bpf_sdt_comma := ,
_bpf_sdt_json = $(subst ",\",$(subst \,\\,$(1)))
_bpf_sdt_sh = '$(subst ','\'',$(1))'
_bpf_sdt_cc = $(BPF_CLANG) $(BPF_TARGET) $(BPF_CFLAGS) $(BPF_SDT_CFLAGS) $(BPF_EXTRA_CFLAGS)
_bpf_sdt_entry = {"directory": "$(call _bpf_sdt_json,$(CURDIR))", "file": "$(call _bpf_sdt_json,$(abspath $(1)))", "command": "$(call _bpf_sdt_json,$(_bpf_sdt_cc) -c $(call _bpf_sdt_sh,$(abspath $(1))))"}
$(BPF_SDT_OUTDIR)/compile_commands.json: $(MAKEFILE_LIST) $(BPF_SDT_SOURCES)
	$(shell mkdir -p $(call _bpf_sdt_sh,$(@D)))$(file >$@,[$(subst } {,}$(_bpf_sdt_comma) {,$(foreach s,$(BPF_SDT_SOURCES),$(call _bpf_sdt_entry,$(s))))])
	@test -s $@

# Including this file must not change the includer's default goal.
.DEFAULT_GOAL := $(_bpf_sdt_default_goal)
