# The seed script, exactly as a user writes it: no `if __name__ == "__main__":` guard needed.
from pathlib import Path

from faceetl import Pife

here = Path(__file__).resolve().parent
paths = sorted(str(p) for p in (here / "images").rglob("*.jpg"))
output_dir = here / "output"

faces = Pife("retinaface", 2).extract(paths, output_dir)  # a lazy Dask frame of the dataset

print(faces[["path", "face", "score", "status"]].compute().to_string())
print(f"crops: {output_dir} (mirroring examples/images), manifest: {output_dir / 'faces.parquet'}")
