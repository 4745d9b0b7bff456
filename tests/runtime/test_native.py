import subprocess
import sys
import textwrap

import onnxruntime
import pytest

from featx import FeatxError
from featx.runtime.native import native, onnxruntime_library


def test_native_runner_reaches_the_installed_onnxruntime_through_the_cpp_api():
    runner = native()
    assert runner.onnxruntime_loaded()
    assert runner.onnxruntime_version() == onnxruntime.__version__
    assert "CPUExecutionProvider" in runner.onnxruntime_providers()
    assert runner.onnxruntime_library_path() == str(onnxruntime_library())


def test_loading_a_second_onnxruntime_copy_is_refused(tmp_path):
    runner = native()
    with pytest.raises(RuntimeError, match="already loaded"):
        runner.load_onnxruntime(str(tmp_path / "libonnxruntime.so.other"))


def test_native_errors_say_what_is_wrong_in_a_fresh_process(tmp_path):
    missing = tmp_path / "nothing.so"
    script = textwrap.dedent(
        f"""
        from featx import _runner
        load_missing = lambda: _runner.load_onnxruntime({str(missing)!r})
        for call in (_runner.onnxruntime_version, load_missing):
            try:
                call()
            except RuntimeError as err:
                print(err)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    not_loaded, bad_path = result.stdout.strip().splitlines()
    assert "ONNX Runtime is not loaded" in not_loaded
    assert f"cannot load ONNX Runtime from '{missing}'" in bad_path


def test_missing_onnxruntime_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(FeatxError, match=r"not installed: pip install 'featx\[cpu\]'"):
        onnxruntime_library()
