"""A publishing process for the SIGKILL tests: `python publish_driver.py SETTINGS_JSON DATA_FILE [kill-before-push]`."""
import hashlib
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
from dataset_registry.registry import RegistryClient, RegistrySettings  # noqa: E402

settings = json.loads(sys.argv[1])
data = Path(sys.argv[2]).read_bytes()
client = RegistryClient(RegistrySettings(**{**settings, "work_dir": Path(settings["work_dir"])}))
if sys.argv[3:] == ["kill-before-push"]:
    original = client.runner.run

    def run(args, **kwargs):
        if "push" in args:
            print("committed and tagged locally; dying before git push", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return original(args, **kwargs)

    client.runner.run = run
staged = client.staging_file("sales", "train.csv")
staged.write_bytes(data)
print("publishing", flush=True)
result = client.publish("sales", "train.csv", "v1", staged, hashlib.md5(data).hexdigest(), data.count(b"\n") - 1)
print(json.dumps(result.as_dict()), flush=True)
