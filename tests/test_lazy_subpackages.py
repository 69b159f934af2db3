import subprocess
import sys


def test_subpackages_and_core_modules_resolve_lazily_like_names() -> None:
    code = (
        "import sys, kit\n"
        "assert 'kit.health' not in sys.modules and 'lightning' not in sys.modules\n"
        "assert kit.planner.__name__ == 'kit.health.planner'\n"
        "assert kit.health.__name__ == 'kit.health' and kit.data.__name__ == 'kit.data'\n"
        "assert 'lightning' not in sys.modules  # core access never drags Lightning in\n"
        "assert kit.callbacks.__name__ == 'kit.callbacks' and kit.temperature_weights.__module__\n"
        "assert {'health', 'models'} <= set(dir(kit))\n"
        "try:\n    kit.nosuch\nexcept AttributeError as e:\n    assert 'nosuch' in str(e)\n"
        "else:\n    raise SystemExit('kit.nosuch resolved')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
