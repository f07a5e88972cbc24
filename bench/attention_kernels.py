"""GPU check of the 'varlen' attention kernel against sdpa on packed rows. Run from the repository root:

    HF_HUB_OFFLINE=1 .venv/bin/python bench/attention_kernels.py    # needs a CUDA GPU; ~1-2 minutes

1. the equivalence tests on the real kernels (tests/test_varlen_attention.py -k gpu);
2. forward+backward of a packed batch on a Llama-1B-shaped model cut to 4 layers, bf16, with
   transformers' 'sdpa' (block-diagonal mask built from the position ids) against the runner's
   'varlen' (torch varlen_attn; flash-attn's too where installed): step time, tokens/s, loss,
   largest gradient difference, peak memory.
"""

import subprocess
import sys
import time

import torch

sys.path.insert(0, ".")
from runner.toolkit import varlen_attention as va
from runner.toolkit.collate import PackedCollator

if not torch.cuda.is_available():
    print("attention_kernels.py needs a CUDA GPU")
    sys.exit(0)
tests = ["tests/test_varlen_attention.py", "-k", "gpu"]
rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests])
print("equivalence tests on the GPU:", "passed" if rc == 0 else f"FAILED (rc {rc})", flush=True)

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

print(torch.__version__, torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
va.register()
config = LlamaConfig(
    vocab_size=32000, hidden_size=2048, intermediate_size=8192, num_hidden_layers=4,
    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096,
)  # fmt: skip
torch.manual_seed(0)
base = LlamaForCausalLM(config).to("cuda", torch.bfloat16)

ROWS, WIDTH = 8, 2048
generator = torch.Generator().manual_seed(0)
rows = []
for _ in range(ROWS):  # each row filled with samples of 64..1024 tokens, positions restarting
    ids, positions = [], []
    while len(ids) < WIDTH:
        n = min(int(torch.randint(64, 1024, (1,), generator=generator)), WIDTH - len(ids))
        ids += torch.randint(3, 32000, (n,), generator=generator).tolist()
        positions += range(n)
    rows.append({"input_ids": ids, "labels": ids, "position_ids": positions})
batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in PackedCollator(0)(rows).items()}
tokens = ROWS * WIDTH


def step(model):
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return loss


results = {}
kernels = ["sdpa", "varlen"]
for kernel in kernels:
    base.set_attn_implementation(kernel)
    for _ in range(3):
        step(base)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    n = 10
    for _ in range(n):
        loss = step(base)
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / n
    grads = {name: p.grad.float().clone() for name, p in base.named_parameters() if p.grad is not None}
    results[kernel] = (float(loss.detach()), grads)
    print(
        f"{kernel:7s} backend {va.describe(base, 'bf16').get('backend', '-'):18s} step {seconds * 1000:7.1f} ms  "
        f"{tokens / seconds:10.0f} tokens/s  loss {float(loss.detach()):.4f}  "
        f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB",
        flush=True,
    )
(loss_a, grads_a), (loss_b, grads_b) = results["sdpa"], results["varlen"]
worst = max(float((grads_a[k] - grads_b[k]).abs().max() / (grads_a[k].abs().max() + 1e-12)) for k in grads_a)
print(f"loss difference {abs(loss_a - loss_b):.2e}; largest gradient difference {worst:.2e} of the tensor's largest")
