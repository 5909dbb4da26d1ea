from setuptools import find_packages, setup

setup(
    name="openrlhf_tapo",
    version="0.1.0",
    description="Tool-Aware Policy Optimization (TAPO) and multimodal search agents for OpenRLHF 0.11.2",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["openrlhf_tapo", "openrlhf_tapo.*"]),
    include_package_data=True,
    package_data={"openrlhf_tapo": ["py.typed"]},
    # What our own code imports. OpenRLHF is not listed here: on a GPU cluster take the `gpu` extra; on CPU
    # install requirements/cpu.txt with requirements/constraints-cpu.txt (OpenRLHF --no-deps, see README).
    install_requires=[
        "aiohttp",
        "bm25s",
        "matplotlib",
        "numpy",
        "pandas",
        "pillow",
        "pyarrow",
        "pyyaml",
    ],
    extras_require={
        # OpenRLHF as it expects to be installed on GPUs: vLLM 0.29.0 and flash-attn 2.8.3 come with it.
        "gpu": ["openrlhf[vllm]==0.11.2"],
        "dev": ["pytest", "pytest-asyncio", "hypothesis", "ruff"],
    },
    entry_points={"console_scripts": ["openrlhf-tapo-train=openrlhf_tapo.cli.train_ppo_ray:main"]},
)
