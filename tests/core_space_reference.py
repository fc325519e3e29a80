# Independent reference for weld's core_space method: mergekit pull request #646's algorithm
# step by step in NumPy float64 (rank-r factors of each task vector, SVD bases of the
# concatenated factors cut to their common width, per-model cores averaged, mapped back).
# Usage: core_space_reference.py '{"sources": [[...], ...], "base": i, "shape": [m, n], "weight": w}'
#        core_space_reference.py @FILE (FILE holding that JSON)
# Prints the merged tensor as a JSON list.
import json
import sys

import numpy as np

argument = sys.argv[1]
if argument.startswith("@"):  # a file holding the JSON (cases too long for one argument)
    with open(argument[1:]) as f:
        argument = f.read()
case = json.loads(argument)
sources = [np.array(s, dtype=np.float64) for s in case["sources"]]
base = sources[case["base"]]
deltas = [s - base for i, s in enumerate(sources) if i != case["base"]]
weight = case["weight"]

if len(case["shape"]) != 2:
    merged = base + weight * sum(deltas) / len(deltas)
else:
    m, n = case["shape"]
    rank = max(1, min(16, min(m, n) // 4))
    Bs, As = [], []
    for d in deltas:
        U, S, Vt = np.linalg.svd(d.reshape(m, n), full_matrices=False)
        Bs.append(U[:, :rank])
        As.append(np.diag(S[:rank]) @ Vt[:rank, :])
    U_B = np.linalg.svd(np.concatenate(Bs, axis=1), full_matrices=False)[0]
    V_A = np.linalg.svd(np.concatenate(As, axis=0), full_matrices=False)[2].T
    common = min(U_B.shape[1], V_A.shape[1])
    U_B, V_A = U_B[:, :common], V_A[:, :common]
    cores = [U_B.T @ B @ A @ V_A for A, B in zip(As, Bs)]
    merged = base + (U_B @ (weight * sum(cores) / len(cores)) @ V_A.T).reshape(-1)
print(json.dumps([float(x) for x in merged]))
