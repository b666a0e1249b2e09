# Two commands for a newcomer: `make demo` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
WORKDIR ?= runs/demo

.PHONY: install demo test bench clean mutate

$(BIN)/jaxtransfer: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test,weights,text]'
	touch $@

install: $(BIN)/jaxtransfer

demo: install
	$(BIN)/jaxtransfer demo --workdir=$(WORKDIR)

test: install
	$(BIN)/python -m pytest -q -n auto

bench: install
	$(BIN)/python -m experiments.benchmarks.run --out=runs/bench

# `make mutate` (issue #20): mutation testing with mutmut (the `mutate` extra). One core module at a time is
# mutated and only its own fast tests run against each mutant, in runs/mutate/<module> (a fresh copy of the
# package and of those tests; mutmut's results there are kept while these copies stay byte-identical, so a
# re-run resumes where the last one stopped, and start over when any of them changed). Each module stops
# after MUTATE_TIMEOUT seconds of wall time: mutants not reached by then are reported as not checked. Summary: runs/mutate/summary.txt; surviving mutants: runs/mutate/<module>/survived.diff.
MUTATE_MODULES ?= losses rules optim transfer checkpoint transferability fewshot
MUTATE_TIMEOUT ?= 240
MUTATE_CHILDREN ?= 2
mutate_tests_losses := tests/test_losses.py tests/test_losses_masks.py
mutate_tests_rules := tests/test_rules.py tests/test_rules_presets.py
mutate_tests_optim := tests/test_freezing.py tests/test_strategies.py
mutate_k_optim := not train_loop
mutate_tests_transfer := tests/test_transfer.py
mutate_tests_checkpoint := tests/test_transfer.py $(wildcard tests/test_checkpoint_damage.py)
mutate_tests_transferability := tests/test_transferability.py tests/test_logme_reference.py
mutate_k_transferability := not real_digits
mutate_tests_fewshot := tests/test_data.py tests/test_fewshot_edges.py
mutate_k_fewshot := fewshot or k_equal
mutate_file = $(if $(filter fewshot,$(1)),jaxtransfer/data/fewshot.py,jaxtransfer/$(1).py)
# Imported once by mutmut's fork server (no JAX backend is started), not again by every mutant's test run.
MUTATE_PRELOAD := numpy scipy.optimize jax jax.numpy flax.linen optax orbax.checkpoint tensorflow_datasets grain \
                  ml_collections pytest jaxtransfer.train jaxtransfer.advise jaxtransfer.data.fewshot

# Statements not mutated: raising an error and logging (only their message text would change, and no code
# may branch on an error's message: which error is raised is decided by the line before).
MUTATE_SKIP := '^\s*raise\b' '^\s*log\.\w+\('

$(BIN)/mutmut: $(BIN)/jaxtransfer
	$(BIN)/pip install -q -c constraints.txt -e '.[test,mutate]'
	touch $@

mutate: $(BIN)/mutmut
	@mkdir -p runs/mutate && rm -f runs/mutate/summary.txt
	@for m in $(MUTATE_MODULES); do $(MAKE) --no-print-directory mutate-$$m || exit 1; done
	@cat runs/mutate/summary.txt

mutate-%: $(BIN)/mutmut
	$(eval ws := runs/mutate/$*)
	@test -n "$(mutate_tests_$*)" || { echo "mutate: no tests listed for module $*"; exit 1; }
	@mkdir -p $(ws) && rm -rf $(ws)/jaxtransfer $(ws)/tests && mkdir $(ws)/tests
	@cp -r jaxtransfer pyproject.toml $(ws)/ && find $(ws)/jaxtransfer -name __pycache__ -prune -exec rm -rf {} +
	@cp tests/conftest.py $(mutate_tests_$*) $(ws)/tests/
	@printf '%s\n' $(MUTATE_PRELOAD) > $(ws)/preload.txt
	@printf '[mutmut]\nsource_paths = jaxtransfer\nonly_mutate = %s\nprocess_isolation = forkserver\nforkserver_warmup = import\npreload_modules_file = %s\n' \
	  $(call mutate_file,$*) $(abspath $(ws))/preload.txt > $(ws)/setup.cfg
	@printf 'do_not_mutate_patterns =\n  %s\n  %s\npytest_add_cli_args_test_selection =\n' $(MUTATE_SKIP) >> $(ws)/setup.cfg
	@for t in $(notdir $(mutate_tests_$*)); do echo "  tests/$$t" >> $(ws)/setup.cfg; done
	@$(if $(mutate_k_$*),printf '  -k\n  %s\n' '$(mutate_k_$*)' >> $(ws)/setup.cfg,true)
	@cd $(ws) && find jaxtransfer tests setup.cfg -type f | sort | xargs md5sum > inputs.new && \
	  { cmp -s inputs.new inputs.md5 || rm -rf mutants; } && mv inputs.new inputs.md5
	@echo "mutate $*: $(call mutate_file,$*) against $(mutate_tests_$*) $(if $(mutate_k_$*),(-k '$(mutate_k_$*)')), at most $(MUTATE_TIMEOUT) s"
	@cd $(ws) && { timeout -k 10 $(MUTATE_TIMEOUT) $(abspath $(BIN))/mutmut run --max-children $(MUTATE_CHILDREN) > run.log 2>&1; \
	  code=$$?; test $$code = 124 && echo "  stopped at the time limit"; test $$code = 0 -o $$code = 124 || { tail -20 run.log; exit $$code; }; }
	@cd $(ws) && $(abspath $(BIN))/mutmut export-cicd-stats > /dev/null && $(abspath $(BIN))/mutmut results > results.txt 2>&1; \
	  grep ': survived' results.txt | sed 's/^ *//; s/: survived$$//' | while read n; do $(abspath $(BIN))/mutmut show $$n; echo; done > survived.diff
	@$(abspath $(BIN))/python -c "import json, sys; s = json.load(open('$(ws)/mutants/mutmut-cicd-stats.json')); \
	  done = sum(v for k, v in s.items() if k != 'total'); \
	  print(f'$*: killed {s[\"killed\"]}, survived {s[\"survived\"]}, timeout {s[\"timeout\"]}, suspicious {s[\"suspicious\"]}, ' \
	        f'no tests {s[\"no_tests\"]}, not checked {s[\"total\"] - done} (of {s[\"total\"]} mutants)')" | tee -a runs/mutate/summary.txt

clean:
	rm -rf $(VENV) runs
