// γ-CE and TaiLr in plain JavaScript (float64), judged against the golden vectors.
//
//   node docs/examples/check_vectors.mjs gammace_ref/conformance/vectors          # the careful formulas: passes
//   node docs/examples/check_vectors.mjs gammace_ref/conformance/vectors naive    # the textbook formulas: fails
//
// Every file, the float64 group, every case: loss and gradient per row,
// compared with rel_err = |got - expected| / max(|expected|, tiny) against
// the float64 tolerance 1e-12.  Exit status 1 if any case fails.
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

const TINY = 2.2250738585072014e-308; // smallest normal float64
const MAX = Number.MAX_VALUE;
const TOL = 1e-12;

// The vectors hold every float as a string: "0.1", "-inf", "nan", ...
const num = (s) => ({ inf: Infinity, "-inf": -Infinity, nan: NaN })[s] ?? Number(s);

function logaddexp(a, b) {
  if (a === -Infinity) return b;
  if (b === -Infinity) return a;
  const m = Math.max(a, b);
  return m + Math.log1p(Math.exp(-Math.abs(a - b)));
}

// One row: logits z, target y.  The formulas of docs/numerics.md.
function row(z, y, loss, gamma, b, eps) {
  const C = z.length;
  const m = Math.max(...z);
  const e = z.map((v, j) => (j === y ? 0 : Math.exp(v - m)));
  const R = e.reduce((s, v) => s + v, 0); // the other classes' mass
  const d = z[y] - m; // ≤ 0
  const logS = Math.log1p(R + Math.expm1(d));
  const s = R + Math.exp(d);
  const q = R / s; // 1 - p, without cancellation
  const lp = d - logS; // log p
  const c = 1 - gamma;
  const logG = gamma > 0 ? Math.log(gamma) : -Infinity;
  const logC = c > 0 ? Math.log(c) : -Infinity;
  let L;
  const x = c * q;
  if (x <= 0.5) {
    const psi = x < Math.sqrt(2.220446049250313e-16) ? 1 + x * (0.5 + x / 3) : -Math.log1p(-x) / x;
    L = q * psi; // -log(1 - x)/c = q·ψ(x); 1 - p at γ = 1
  } else {
    L = -logaddexp(logG, logC + lp) / c;
  }
  let k = Math.exp(-logaddexp(logG - Math.max(lp, -MAX), logC)); // w = p/(γ + c·p)
  if (loss === "tailr") {
    k = Math.min(Math.max(k, b), 1);
    L = k * (logS - d);
  }
  if (eps > 0) {
    const smooth = z.reduce((acc, v) => acc + (m - v), 0) + C * logS; // Σ_j -log p_j
    L = (1 - eps) * L + (eps / C) * smooth;
  }
  const k1 = (1 - eps) * k;
  const grad = e.map((v) => ((k1 + eps) * v) / s - eps / C);
  grad[y] = -k1 * q + eps * (Math.exp(d) / s - 1 / C);
  return [L, grad];
}

// The textbook version: softmax first, then the formulas as written.
function naiveRow(z, y, loss, gamma, b, eps) {
  const m = Math.max(...z);
  const ez = z.map((v) => Math.exp(v - m));
  const sum = ez.reduce((s, v) => s + v, 0);
  const p = ez.map((v) => v / sum);
  const w = p[y] / (gamma + (1 - gamma) * p[y]);
  let L = gamma === 1 ? 1 - p[y] : -Math.log(gamma + (1 - gamma) * p[y]) / (1 - gamma);
  let k = w;
  if (loss === "tailr") {
    k = Math.min(Math.max(w, b), 1);
    L = -k * Math.log(p[y]);
  }
  if (eps > 0) L = (1 - eps) * L - (eps / z.length) * p.reduce((s, v) => s + Math.log(v), 0);
  const grad = p.map((v, j) => (1 - eps) * k * (v - (j === y ? 1 : 0)) + eps * (v - 1 / z.length));
  return [L, grad];
}

function relErr(got, expected) {
  if (got === expected || (Number.isNaN(got) && Number.isNaN(expected))) return 0;
  if (Math.abs(got) < TINY && Math.abs(expected) < TINY) return 0;
  const err = Math.abs(got - expected) / Math.max(Math.abs(expected), TINY);
  return Number.isNaN(err) ? Infinity : err;
}

const dir = process.argv[2] ?? "gammace_ref/conformance/vectors";
const impl = process.argv[3] === "naive" ? naiveRow : row;
let failed = 0;
for (const file of readdirSync(dir).filter((f) => f.endsWith(".json")).sort()) {
  const doc = JSON.parse(readFileSync(join(dir, file), "utf8"));
  const g = doc.float64;
  const logits = g.logits.map((r) => r.map(num));
  let worst = 0;
  for (const cs of g.cases) {
    const [gamma, eps] = [num(cs.gamma), num(cs.label_smoothing)];
    const b = cs.threshold === null ? 0 : num(cs.threshold);
    logits.forEach((z, i) => {
      const [L, grad] = impl(z, g.targets[i], cs.loss, gamma, b, eps);
      worst = Math.max(worst, relErr(L, num(cs.expected_loss[i])));
      grad.forEach((v, j) => (worst = Math.max(worst, relErr(v, num(cs.expected_grad[i][j])))));
    });
  }
  const ok = worst <= TOL;
  failed += ok ? 0 : 1;
  console.log(`${doc.regime.padEnd(16)} ${g.cases.length} cases  worst rel err ${worst.toExponential(1)}  ${ok ? "ok" : "FAIL"}`);
}
console.log(failed ? `${failed} regime(s) FAILED` : "all regimes within 1e-12");
process.exit(failed ? 1 : 0);
