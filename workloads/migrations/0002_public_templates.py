"""The public catalogue of launch templates that every customer sees from the start (staff keep it in the admin)."""

from django.db import migrations

# Each starts an SSH server for the keys the platform mounts at /root/.ssh (and passes in PUBLIC_KEY), so every
# template can be reached with `ssh -p PORT root@HOST`; the notebook is protected by the JUPYTER_TOKEN it is given.
SSHD = (
    "mkdir -p /run/sshd /root/.ssh && "
    "(command -v sshd >/dev/null || (apt-get update -qq && apt-get install -y -qq openssh-server >/dev/null)) && "
    "/usr/sbin/sshd -o PermitRootLogin=prohibit-password -o PasswordAuthentication=no"
)
TEMPLATES = [
    {
        "slug": "pytorch-jupyter",
        "name": "PyTorch 2.5 + JupyterLab",
        "image": "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-devel",
        "command": [
            "bash",
            "-c",
            SSHD + " && pip install -q jupyterlab && exec jupyter lab --allow-root --ip=0.0.0.0 --port=8888 "
            "--no-browser --IdentityProvider.token=\"$JUPYTER_TOKEN\" --ServerApp.root_dir=/workspace",
        ],
        "ports": [22, 8888],
        "env": {},
        "min_disk_gb": 50,
        "description": "PyTorch 2.5 with CUDA 12.4 and cuDNN 9, JupyterLab on port 8888 (token in the link) and SSH.",
        "description_zh": "PyTorch 2.5（CUDA 12.4、cuDNN 9），8888 端口的 JupyterLab（链接中带令牌）及 SSH。",
    },
    {
        "slug": "vllm",
        "name": "vLLM OpenAI-compatible server",
        "image": "vllm/vllm-openai:v0.6.4",
        "command": [
            "bash",
            "-c",
            SSHD + " && exec python3 -m vllm.entrypoints.openai.api_server --host 0.0.0.0 --port 8000 "
            "--model \"${MODEL:-Qwen/Qwen2.5-7B-Instruct}\" --tensor-parallel-size \"${TP_SIZE:-1}\"",
        ],
        "ports": [22, 8000],
        "env": {"MODEL": "Qwen/Qwen2.5-7B-Instruct", "TP_SIZE": "1"},
        "min_disk_gb": 100,
        "description": "Serve a model with vLLM's OpenAI-compatible API on port 8000; set MODEL and TP_SIZE. SSH too.",
        "description_zh": "用 vLLM 在 8000 端口提供兼容 OpenAI 的推理接口；通过 MODEL、TP_SIZE 设置模型与并行度。含 SSH。",
    },
    {
        "slug": "cuda-ssh",
        "name": "CUDA 12.4 base with SSH",
        "image": "nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04",
        "command": ["bash", "-c", SSHD.replace("/usr/sbin/sshd ", "exec /usr/sbin/sshd -D ")],
        "ports": [22],
        "env": {},
        "min_disk_gb": 20,
        "description": "A plain CUDA 12.4 + cuDNN development image on Ubuntu 22.04 with an SSH server: bring your own.",
        "description_zh": "Ubuntu 22.04 上的 CUDA 12.4 + cuDNN 开发镜像，带 SSH 服务：自行安装所需环境。",
    },
]


def add(apps, schema_editor):
    Template = apps.get_model("workloads", "Template")
    for fields in TEMPLATES:
        Template.objects.update_or_create(organization=None, slug=fields["slug"], defaults=fields)


def remove(apps, schema_editor):
    apps.get_model("workloads", "Template").objects.filter(
        organization=None, slug__in=[t["slug"] for t in TEMPLATES]
    ).delete()


class Migration(migrations.Migration):
    dependencies = [("workloads", "0001_ssh_keys_templates_workloads")]
    operations = [migrations.RunPython(add, remove)]
