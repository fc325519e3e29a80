// llama.cpp (through node-llama-cpp) on a GGUF file: loads it on the CPU, evaluates a token
// sequence, and prints as JSON, for every position, the log-probability llama.cpp gives every
// token of the vocabulary as the next one (log of the softmax of its logits, from the greedy
// sampler's full candidate list).
// Usage: node gguf_logits.mjs MODEL.gguf '[1, 2, 3]'
import {getLlama} from "node-llama-cpp";

const [modelPath, tokensJson] = process.argv.slice(2);
const tokens = JSON.parse(tokensJson);
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const model = await llama.loadModel({modelPath});
// A float32 KV cache and no flash attention: the same arithmetic as a plain float32 forward pass.
const context = await model.createContext({
	contextSize: Math.max(32, tokens.length),
	batchSize: tokens.length,
	flashAttention: false,
	experimentalKvCacheKeyType: "F32",
	experimentalKvCacheValueType: "F32"
});
const sequence = context.getSequence();
const results = await sequence.controlledEvaluate(tokens.map((t) => [t, {generateNext: {probabilities: true}}]));
const rows = results.map((r) => {
	const row = {};
	for (const [token, p] of r.next.probabilities) row[token] = Math.log(p);
	return row;
});
console.log(JSON.stringify(rows));
await context.dispose();
await model.dispose();
await llama.dispose();
