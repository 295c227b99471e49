"""Does the CPU's vector instruction set change a training step's bits? (issue 31)

    python experiments/results/cifar10_cpu/full50k-replay/isa_bits.py

One resnet20 training step (seed 0, 32 random images, one thread, channels_last) per norm, in a
fresh process per ATEN_CPU_CAPABILITY value (the machine's own, avx2, default): prints the loss
and a hash of every parameter gradient, and writes isa_bits.json beside this file.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

STEP = """
import hashlib, sys, torch
from proxynorm.models import create_model
torch.set_num_threads(1)
torch.manual_seed(0)
m = create_model("resnet20", norm=sys.argv[1], groups=8).to(memory_format=torch.channels_last)
x = torch.randn(32, 3, 32, 32).to(memory_format=torch.channels_last)
y = torch.randint(0, 10, (32,))
loss = torch.nn.functional.cross_entropy(m(x), y)
loss.backward()
g = torch.cat([p.grad.flatten() for p in m.parameters()]).numpy().tobytes()
print(torch.backends.cpu.get_cpu_capability(), repr(loss.item()), hashlib.sha1(g).hexdigest())
"""

rows = []
for norm in ("bn", "gn+pn"):
    for cap in (None, "avx2", "default"):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        if cap:
            env["ATEN_CPU_CAPABILITY"] = cap
        out = subprocess.run([sys.executable, "-c", STEP, norm], env=env, capture_output=True,
                             text=True, check=True).stdout.split()
        rows.append({"norm": norm, "cpu_capability": out[0], "loss": float(out[1]),
                     "grad_sha1": out[2]})
        print(rows[-1])
Path(__file__).with_name("isa_bits.json").write_text(json.dumps(rows, indent=1) + "\n")
