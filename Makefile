# reachsafe — every target works as the first command on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-16)
PYTEST_FLAGS ?=

.PHONY: setup demo test test-all bench lint clean safety-gym

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[robot,sim,trainer,dev]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

demo: setup
	$(BIN)/reachsafe demo --out demo_out

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_FLAGS)

test-all: setup
	$(BIN)/python -m pytest -q -m "not hardware and not gpu" $(PYTEST_FLAGS)

# Safety-Gymnasium 1.0.0 in its own environment (it pins gymnasium 0.28 and numpy < 1.24, which cannot
# share .venv), for scripts/safety_gym_server.py and the tests marked safety_gym. Pins and why:
# scripts/safety_gym_requirements.txt. The source fix 1.0.0 needs on Python 3.11: its asset dataclasses
# default `color` to an ndarray, which 3.11 rejects ("mutable default ... use default_factory"); the sed
# makes it a default_factory. Headless rendering: MUJOCO_GL=egl (else MUJOCO_GL=osmesa, with
# `apt-get install libosmesa6`).
SG_VENV := .venv-safety-gym
SG_PY ?= python3.11
SG_STAMP := $(SG_VENV)/.installed-$(shell cat scripts/safety_gym_requirements.txt | sha256sum | cut -c1-16)

safety-gym: $(SG_STAMP)

$(SG_STAMP): scripts/safety_gym_requirements.txt
	@test -x $(SG_VENV)/bin/python || $(SG_PY) -m venv $(SG_VENV)
	$(SG_VENV)/bin/python -m pip install -q -r scripts/safety_gym_requirements.txt
	$(SG_VENV)/bin/python -m pip install -q --no-deps safety-gymnasium==1.0.0
	$(SG_VENV)/bin/python -m pip install -q --no-deps -e .
	cd $$($(SG_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/safety_gymnasium/assets && \
	  sed -i -e "s/color: np.array = COLOR\[\('[a-z_]*'\)\]/color: np.array = field(default_factory=lambda: COLOR[\1])/" \
	    -e "s/^from dataclasses import dataclass$$/from dataclasses import dataclass, field/" geoms/*.py free_geoms/*.py mocaps/*.py
	MUJOCO_GL=egl $(SG_VENV)/bin/python -c "import safety_gymnasium; safety_gymnasium.make('SafetyPointGoal1-v0')"
	@rm -f $(SG_VENV)/.installed-*
	@touch $(SG_STAMP)

bench: setup
	$(BIN)/python -m bench.run_all

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) $(SG_VENV) demo_out .bench_out .pytest_cache
