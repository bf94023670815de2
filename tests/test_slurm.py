"""profiles/slurm against a real single-node SLURM started on this machine.

The session fixture writes /etc/slurm/slurm.conf (SLURM reads no other place inside
jobs), starts munged, slurmctld and slurmd as child processes of this test run, and
stops them at the end. Two fake GPUs (character devices made with mknod) back a
`gpu:a100:2` GRES so that GPU requests are scheduled for real. Status polling uses
squeue (no slurmdbd here). Needs root and the Debian packages
munge slurmctld slurmd slurm-client; skips with the reason otherwise.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from test_workflow import BIN, ENV, small_workflow

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]

SBIN = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "scancel")
CONF_DIR = Path("/etc/slurm")
MARK = "# written by tests/test_slurm.py (removed when the tests end)\n"
LOCK = Path("/tmp/sslaug-slurm-test.lock")
GPU_MODEL = "a100"


def which(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), *SBIN]))


def cluster_unavailable() -> str | None:
    """Why a SLURM cluster cannot be started here, or None."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root to start munged, slurmctld and slurmd"
    missing = [name for name in DAEMONS + CLIENTS if which(name) is None]
    if missing:
        return (
            f"SLURM is not installed ({', '.join(missing)} missing): "
            "apt-get install -y --no-install-recommends munge slurmctld slurmd slurm-client"
        )
    for name in ("slurm.conf", "gres.conf"):
        path = CONF_DIR / name
        if path.exists() and not path.read_text().startswith(MARK):
            return f"{path} exists and was not written by this test: not touching a configured SLURM"
    running = subprocess.run(["pgrep", "-x", "slurmctld|slurmd"], capture_output=True, text=True).stdout.split()
    if running:
        return f"slurmctld/slurmd already running (pids {' '.join(running)}): not touching a running SLURM"
    return None


class Cluster:
    """A one-node SLURM (controller and compute node on this host) with two fake GPUs."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.host = socket.gethostname().split(".")[0]
        self.processes: list[subprocess.Popen] = []
        self.written: list[Path] = []

    def _start(self, argv: list[str], **kwargs) -> subprocess.Popen:
        log = open(self.scratch / f"{Path(argv[0]).name}.out", "w")
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)
        self.processes.append(process)
        return process

    def _munge_works(self) -> bool:
        try:
            token = subprocess.run([which("munge"), "-n"], capture_output=True, timeout=5)
            return token.returncode == 0 and subprocess.run([which("unmunge")], input=token.stdout, capture_output=True, timeout=5).returncode == 0
        except (subprocess.TimeoutExpired, TypeError):
            return False

    def start_munge(self) -> None:
        if self._munge_works():
            return  # a munged is already running on this machine: use it, leave it
        import pwd

        munge = pwd.getpwnam("munge")
        for directory in ("/run/munge", "/var/lib/munge", "/var/log/munge", "/etc/munge"):
            Path(directory).mkdir(parents=True, exist_ok=True)
            os.chown(directory, munge.pw_uid, munge.pw_gid)
        if not Path("/etc/munge/munge.key").exists():
            subprocess.run(["runuser", "-u", "munge", "--", which("mungekey"), "--create"], check=True, timeout=30)
        self._start([which("munged"), "--foreground", "--force"], user=munge.pw_uid, group=munge.pw_gid, extra_groups=[])
        self._wait(self._munge_works, 15, "munged did not answer")

    def write_config(self) -> None:
        for name in ("state", "spool", "gpus"):
            (self.scratch / name).mkdir(exist_ok=True)
        for index in range(2):  # GRES needs File=; character devices like /dev/nvidiaN
            device = self.scratch / "gpus" / f"nvidia{index}"
            try:
                os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(195, index))
            except OSError as error:
                pytest.skip(f"cannot make the fake GPU device files (mknod): {error}")
        node = subprocess.run([which("slurmd"), "-C"], capture_output=True, text=True, check=True, timeout=30).stdout
        node = re.search(r"^NodeName=.*$", node, re.MULTILINE).group(0)
        node = re.sub(r"^NodeName=\S+", f"NodeName={self.host}", node)
        node = re.sub(r"RealMemory=(\d+)", lambda m: f"RealMemory={int(m.group(1)) - 512}", node)
        d = self.scratch
        conf = f"""{MARK}ClusterName=sslaugtest
SlurmctldHost={self.host}
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=300
KillWait=5
SlurmdTimeout=60
GresTypes=gpu
{node} Gres=gpu:{GPU_MODEL}:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
        gres = f"{MARK}NodeName={self.host} Name=gpu Type={GPU_MODEL} File={d}/gpus/nvidia[0-1]\n"
        CONF_DIR.mkdir(parents=True, exist_ok=True)
        for name, text in (("slurm.conf", conf), ("gres.conf", gres)):
            (CONF_DIR / name).write_text(text)
            self.written.append(CONF_DIR / name)

    def start(self) -> None:
        started = time.monotonic()
        self.start_munge()
        self.write_config()
        self._start([which("slurmctld"), "-D", "-i"])
        self._start([which("slurmd"), "-D"])
        self._wait(lambda: self.sinfo() == "idle", 60, "the node did not become idle")
        self.startup_seconds = time.monotonic() - started

    def sinfo(self) -> str:
        try:
            return subprocess.run([which("sinfo"), "-h", "-o", "%t"], capture_output=True, text=True, timeout=10).stdout.strip()
        except subprocess.TimeoutExpired:
            return ""

    def _wait(self, ready, seconds: float, what: str) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if ready():
                return
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{process.args[0]} exited with {process.returncode}: {self.logs()}")
            time.sleep(0.5)
        raise RuntimeError(f"{what} within {seconds} s: {self.logs()}")

    def logs(self) -> str:
        texts = []
        for path in sorted(self.scratch.glob("*.log")) + sorted(self.scratch.glob("*.out")):
            texts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-2000:]}")
        return "\n".join(texts)

    def job(self, job_id: str) -> str:
        return subprocess.run([which("scontrol"), "show", "job", job_id], capture_output=True, text=True, timeout=10).stdout

    def stop(self) -> None:
        subprocess.run([which("scancel"), "--full", "--quiet", "-u", "root"], capture_output=True, timeout=20)
        for process in reversed(self.processes):  # slurmd, slurmctld, munged: only what we started
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
        for path in self.written:
            path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    reason = cluster_unavailable()
    if reason:
        pytest.skip(reason)
    lock = open(LOCK, "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pytest.skip("another test session is using the test SLURM cluster")
    cluster = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        lock.close()


def slurm_test_profile(root: Path, **overrides) -> Path:
    """profiles/slurm for the test cluster: mini scale, no conda, fast status polling."""
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    del profile["software-deployment-method"]  # conda is not available here
    profile.update(
        {
            "config": ["scale=mini"],
            "jobs": 4,
            "latency-wait": 5,
            "seconds-between-status-checks": 2,
            "slurm-init-seconds-before-status-checks": 2,
            "slurm-status-command": "squeue",  # no slurmdbd; MinJobAge=300 keeps finished jobs visible
            "slurm-keep-successful-logs": True,
            **overrides,
        }
    )
    path = root / "profiles" / "slurm-test" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    return path.parent


def run_snakemake(root: Path, profile: Path, *args: str, env: dict | None = None, timeout: int = 200) -> subprocess.CompletedProcess:
    """snakemake through SLURM, always bounded: `timeout -k 10` and a subprocess timeout."""
    argv = ["timeout", "-k", "10", str(timeout), str(BIN / "snakemake"), "--workflow-profile", str(profile), "--verbose", *args]
    # Only the settings a test gives: none of the caller's SLURM_* (account, partition, SLURM_CONF).
    base = {key: value for key, value in ENV.items() if not key.startswith(("SLURM_", "SBATCH_", "SSL_GPU_MODEL"))}
    return subprocess.run(argv, cwd=root, env={**base, **(env or {})}, capture_output=True, text=True, timeout=timeout + 30)


def sbatch_calls(output: str) -> dict[str, list[str]]:
    """The sbatch command line of every submitted job, by rule (from --verbose output)."""
    calls: dict[str, list[str]] = {}
    for line in output.splitlines():
        match = re.search(r"sbatch call: (sbatch .*)", line)
        if match:
            rule = re.search(r"--comment '?rule_([a-z_]+?)(?:_wildcards_\S*)?'? ", match.group(1))
            calls.setdefault(rule.group(1) if rule else "?", []).append(match.group(1))
    return calls


def test_mini_workflow_runs_through_sbatch(slurm_cluster: Cluster, tmp_path: Path) -> None:
    """The small mini workflow end to end, every job through sbatch, with the user's settings."""
    root = small_workflow(tmp_path)
    scale_path = root / "config" / "scales" / "mini.yaml"
    scale = yaml.safe_load(scale_path.read_text())
    scale["seeds"] = [0]  # one job per run: each DAG level costs a SLURM round trip
    scale_path.write_text(yaml.safe_dump(scale))
    profile = slurm_test_profile(root)
    started = time.monotonic()
    result = run_snakemake(root, profile, "all_tables", env={"SSL_GPU_MODEL": GPU_MODEL, "SLURM_PARTITION": "debug"})
    seconds = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{errors(output)}\n{slurm_cluster.logs()}"
    table = (root / "results" / "mini" / "tables" / "small.md").read_text()
    assert "paper 92.6" in table and "not implemented yet: option multicrop" in table
    calls = sbatch_calls(output)
    assert {"prepare_dataset", "placeholder_not_implemented", "linear_probe", "aggregate_table", "tables_index"} <= set(calls), calls
    assert len(calls["pretrain"]) == 2, calls  # BYOL and SimCLR, one seed
    for call in (call for rule_calls in calls.values() for call in rule_calls):
        # mini asks for gpu=0 everywhere: zero GPUs of the model, partition from the environment,
        # no account (SLURM_ACCOUNT unset and nothing to guess from here): nothing literal like $SLURM_*
        assert f"--gpus={GPU_MODEL}:0" in call and " -p debug " in call and "--requeue" in call, call
        assert " -A " not in call and "$" not in call.split("--wrap")[0], call
    print(f"\nmini workflow through SLURM: {sum(map(len, calls.values()))} jobs in {seconds:.0f} s (cluster up in {slurm_cluster.startup_seconds:.1f} s)")


def test_generative_shards_go_out_as_a_job_array(slurm_cluster: Cluster, tmp_path: Path) -> None:
    """The unCLIP shards of one dataset are one sbatch --array submission; each shard finishes."""
    root = small_workflow(tmp_path)
    profile = slurm_test_profile(root)
    shards = [f"results/mini/generative_views/unclip/mini/shard{i}/manifest.json" for i in range(2)]
    result = run_snakemake(root, profile, *shards, timeout=240)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{errors(output)}\n{slurm_cluster.logs()}"
    assert all((root / shard).exists() for shard in shards)
    calls = sbatch_calls(output)
    array_calls = [c for c in output.splitlines() if "sbatch" in c and "--array" in c]
    assert array_calls, f"no array submission: {calls}"


GPU_SNAKEFILE = """
rule all:
    input: "gpu.txt", "cpu.txt", "retried.txt"

rule gpu_job:
    output: "gpu.txt"
    resources: gpu=1
    shell: "echo \\"$CUDA_VISIBLE_DEVICES\\" > {output}"

rule cpu_job:  # no gpu resource: the profile's default gpu=0 applies
    output: "cpu.txt"
    shell: "echo \\"${{CUDA_VISIBLE_DEVICES:-none}}\\" > {output}"

rule retried_job:  # fails on attempt 1, succeeds on attempt 2 with twice the runtime
    output: "retried.txt"
    resources: runtime=lambda wildcards, attempt: 5 * attempt
    shell: "test {resources.runtime} -ge 10 && echo {resources.runtime} > {output}"
"""


def test_gpus_retries_and_runtime_growth(slurm_cluster: Cluster, tmp_path: Path) -> None:
    """gpu=N -> --gpus=MODEL:N and CUDA_VISIBLE_DEVICES in the job; no GPU otherwise; retries
    resubmit with attempt-dependent resources."""
    (tmp_path / "Snakefile").write_text(GPU_SNAKEFILE)
    profile = slurm_test_profile(tmp_path)
    started = time.monotonic()
    result = run_snakemake(tmp_path, profile, env={"SSL_GPU_MODEL": GPU_MODEL}, timeout=120)
    seconds = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{errors(output)}\n{slurm_cluster.logs()}"
    assert (tmp_path / "gpu.txt").read_text().strip() in ("0", "1")  # SLURM gave one of the two GPUs
    assert (tmp_path / "cpu.txt").read_text().strip() == "none"
    assert (tmp_path / "retried.txt").read_text().strip() == "10"
    calls = sbatch_calls(output)
    assert [f"--gpus={GPU_MODEL}:1" in call for call in calls["gpu_job"]] == [True], calls
    assert [f"--gpus={GPU_MODEL}:0" in call for call in calls["cpu_job"]] == [True], calls
    assert [re.search(r" -t (\d+) ", call).group(1) for call in calls["retried_job"]] == ["5", "10"], calls
    print(f"\nGPU/retry jobs through SLURM: {seconds:.0f} s")


def test_failing_job_is_reported_and_fails_the_run(slurm_cluster: Cluster, tmp_path: Path) -> None:
    """A job that fails inside SLURM (its input dataset is broken) fails the run."""
    root = small_workflow(tmp_path)
    broken = root / "data" / "mini"
    broken.mkdir(parents=True)
    (broken / "meta.json").write_text("{ not json")
    profile = slurm_test_profile(root, retries=0)
    scale_path = root / "config" / "scales" / "mini.yaml"
    scale = yaml.safe_load(scale_path.read_text())
    scale["seeds"] = [0]
    scale_path.write_text(yaml.safe_dump(scale))
    started = time.monotonic()
    result = run_snakemake(root, profile, "--until", "pretrain", "--", "all_tables", timeout=150)
    seconds = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-4000:]  # not 0, and not killed by the timeout (124, 137, -9)
    assert re.search(r"Error in rule pretrain:\s+message: SLURM-job '\d+' failed, SLURM status is: 'FAILED'", output), errors(output)
    assert len(sbatch_calls(output)["pretrain"]) == 2, output[-4000:]
    assert not list((root / "results").rglob("encoder.pt"))
    print(f"\nfailing job through SLURM: reported in {seconds:.0f} s")


def errors(output: str) -> str:
    """The error blocks of a snakemake log, else its tail."""
    blocks = re.findall(r"Error in rule .*?(?:\n\n|$)", output, re.DOTALL)
    return "\n".join(blocks)[-6000:] or output[-6000:]
