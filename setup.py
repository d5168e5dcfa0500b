from setuptools import find_packages, setup

setup(
    name="scene3d",
    version="0.1.0",
    description="3D scene tokenizers and latent generators in JAX/Flax NNX (3DRAE/3DDiT, SceneTok/SceneGen, Can3Tok)",
    packages=find_packages(include=["scene3d", "scene3d.*", "scene3d_torch", "scene3d_torch.*", "configs"]),
    python_requires=">=3.11",
    install_requires=[l.split("#")[0].strip() for l in open("requirements.txt") if l.split("#")[0].strip()],
)
