// Veracity console: check ledger proofs in the browser, trusting nothing the server computed.
//
// Inclusion (RFC 9162 section 2.1.3.2) and consistency (section 2.1.4.2) proofs are checked
// with WebCrypto's SHA-256; checkpoints' signatures with WebCrypto's Ed25519 over the
// message veracity.checkpoint.v1 || 0x00 || SHA-256(RFC 8785 canonical JSON of the body),
// exactly as veracity/ledger/statement.py signs them. Numbered steps match the page's list.
"use strict";

(function () {
  const enc = new TextEncoder();

  function fromHex(text, what) {
    if (typeof text !== "string" || !/^([0-9a-f]{2})+$/.test(text)) {
      throw new Error(what + " is not lowercase hex");
    }
    const out = new Uint8Array(text.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = parseInt(text.substr(2 * i, 2), 16);
    return out;
  }

  function toHex(bytes) {
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function fromBase64(text, what) {
    let raw;
    try {
      raw = atob(text);
    } catch (err) {
      throw new Error(what + " is not base64");
    }
    return Uint8Array.from(raw, (c) => c.charCodeAt(0));
  }

  function concat(...parts) {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }

  function equal(a, b) {
    return a.length === b.length && a.every((x, i) => x === b[i]);
  }

  async function sha256(bytes) {
    return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  }

  const leafHash = (data) => sha256(concat(Uint8Array.of(0), data));
  const nodeHash = (left, right) => sha256(concat(Uint8Array.of(1), left, right));

  function size(value, what) {
    if (!Number.isSafeInteger(value) || value < 0) throw new Error(what + " is not a size");
    return BigInt(value);
  }

  function hashes(list, what) {
    if (!Array.isArray(list)) throw new Error(what + " is not a list");
    return list.map((h, i) => {
      const b = fromHex(h, what + " element " + i);
      if (b.length !== 32) throw new Error(what + " element " + i + " is not 32 bytes");
      return b;
    });
  }

  // RFC 9162 2.1.3.2: the root that an inclusion path leads to.
  async function inclusionRoot(index, treeSize, leaf, path) {
    if (index >= treeSize) throw new Error("leaf index " + index + " is outside the tree");
    let fn = index;
    let sn = treeSize - 1n;
    let r = leaf;
    for (const p of path) {
      if (sn === 0n) throw new Error("the proof is longer than the tree is deep");
      if ((fn & 1n) === 1n || fn === sn) {
        r = await nodeHash(p, r);
        while ((fn & 1n) === 0n && fn !== 0n) {
          fn >>= 1n;
          sn >>= 1n;
        }
      } else {
        r = await nodeHash(r, p);
      }
      fn >>= 1n;
      sn >>= 1n;
    }
    if (sn !== 0n) throw new Error("the proof is shorter than the tree is deep");
    return r;
  }

  // RFC 9162 2.1.4.2: both roots a consistency path leads to.
  async function consistencyRoots(first, second, path, firstRoot) {
    if (first === 0n || second < first) throw new Error("impossible tree sizes");
    if (first === second) {
      if (path.length) throw new Error("equal sizes need an empty proof");
      return [firstRoot, firstRoot];
    }
    if (!path.length) throw new Error("the consistency proof is empty");
    const items = (first & (first - 1n)) === 0n ? [firstRoot, ...path] : [...path];
    let fn = first - 1n;
    let sn = second - 1n;
    while ((fn & 1n) === 1n) {
      fn >>= 1n;
      sn >>= 1n;
    }
    let fr = items[0];
    let sr = items[0];
    for (const c of items.slice(1)) {
      if (sn === 0n) throw new Error("the proof is longer than the tree is deep");
      if ((fn & 1n) === 1n || fn === sn) {
        fr = await nodeHash(c, fr);
        sr = await nodeHash(c, sr);
        while ((fn & 1n) === 0n && fn !== 0n) {
          fn >>= 1n;
          sn >>= 1n;
        }
      } else {
        sr = await nodeHash(sr, c);
      }
      fn >>= 1n;
      sn >>= 1n;
    }
    if (sn !== 0n) throw new Error("the proof is shorter than the tree is deep");
    return [fr, sr];
  }

  // RFC 8785 for the checkpoint body: an object of ASCII strings and one integer.
  function canonical(body) {
    const keys = Object.keys(body).sort();
    return "{" + keys.map((k) => JSON.stringify(k) + ":" + JSON.stringify(body[k])).join(",") + "}";
  }

  async function rootKey(pem) {
    if (typeof pem !== "string") throw new Error("the root public key is missing");
    const b64 = pem.replace(/-----(BEGIN|END) PUBLIC KEY-----/g, "").replace(/\s+/g, "");
    const der = fromBase64(b64, "the root public key");
    const key = await crypto.subtle.importKey("spki", der, { name: "Ed25519" }, true, ["verify"]);
    const raw = new Uint8Array(await crypto.subtle.exportKey("raw", key));
    return { key, id: toHex(await sha256(raw)) };
  }

  async function checkCheckpoint(root, cp, what) {
    const body = {
      log_id: cp.log_id,
      root_hash: cp.root_hash,
      timestamp: cp.timestamp,
      tree_size: cp.tree_size,
    };
    const digest = await sha256(enc.encode(canonical(body)));
    const message = concat(enc.encode("veracity.checkpoint.v1"), Uint8Array.of(0), digest);
    const signature = fromBase64(cp.signature, what + " signature");
    if (signature.length !== 64) throw new Error(what + " signature is not 64 bytes");
    const ok = await crypto.subtle.verify({ name: "Ed25519" }, root.key, signature, message);
    if (!ok) throw new Error(what + " signature does not verify under the root key");
    return fromHex(cp.root_hash, what + " root hash");
  }

  async function inclusion(doc, step) {
    const { proof, checkpoint } = doc;
    const root = await step("1. Read the coordinator's root public key", async () => {
      const r = await rootKey(doc.root_public_key);
      return [r, "key id " + r.id.slice(0, 16) + "…"];
    });
    const signedRoot = await step("2. Check the checkpoint's Ed25519 signature", async () => [
      await checkCheckpoint(root, checkpoint, "the checkpoint"),
      "size " + checkpoint.tree_size + ", signed " + checkpoint.timestamp,
    ]);
    await step("3. Check the proof is for this log and this checkpoint's size", async () => {
      if (proof.log_id !== checkpoint.log_id) throw new Error("the proof is for another log");
      if (proof.tree_size !== checkpoint.tree_size) {
        throw new Error("the proof is for size " + proof.tree_size + ", not " + checkpoint.tree_size);
      }
      return [null, "log " + proof.log_id.slice(0, 16) + "…"];
    });
    const leaf = await step("4. Hash the entry's bytes (SHA-256 of 0x00 || entry)", async () => {
      const entry = JSON.parse(proof.entry);
      if (entry.seq !== proof.seq) throw new Error("the entry's seq is not the proof's");
      const shown = document.getElementById("entry-body");
      if (shown && shown.textContent !== proof.entry) {
        throw new Error("the proof's entry is not the entry on this page");
      }
      const h = await leafHash(enc.encode(proof.entry));
      return [h, toHex(h).slice(0, 16) + "…"];
    });
    await step("5. Recompute the root from the path and compare", async () => {
      const path = hashes(proof.proof, "proof");
      const r = await inclusionRoot(size(proof.seq, "seq"), size(proof.tree_size, "tree size"), leaf, path);
      if (!equal(r, signedRoot)) throw new Error("the path leads to another root");
      return [null, path.length + " hashes lead to the signed root"];
    });
    return "Verified: entry " + proof.seq + " is in the signed tree of " + proof.tree_size + " entries.";
  }

  async function consistency(doc, step) {
    const { proof } = doc;
    const oldCp = doc.old_checkpoint;
    const newCp = doc.new_checkpoint;
    const root = await step("1. Read the coordinator's root public key", async () => {
      const r = await rootKey(doc.root_public_key);
      return [r, "key id " + r.id.slice(0, 16) + "…"];
    });
    const oldRoot = await step("2. Check the older checkpoint's signature", async () => [
      await checkCheckpoint(root, oldCp, "the older checkpoint"),
      "size " + oldCp.tree_size,
    ]);
    const newRoot = await step("3. Check the newer checkpoint's signature", async () => [
      await checkCheckpoint(root, newCp, "the newer checkpoint"),
      "size " + newCp.tree_size,
    ]);
    await step("4. Check the proof is for this log and these sizes", async () => {
      if (proof.log_id !== oldCp.log_id || proof.log_id !== newCp.log_id) {
        throw new Error("the proof and the checkpoints are not of one log");
      }
      if (proof.old_size !== oldCp.tree_size || proof.new_size !== newCp.tree_size) {
        throw new Error("the proof is for other sizes");
      }
      return [null, proof.old_size + " → " + proof.new_size];
    });
    await step("5. Recompute both roots from the proof and compare", async () => {
      const path = hashes(proof.proof, "proof");
      const [fr, sr] = await consistencyRoots(
        size(proof.old_size, "old size"), size(proof.new_size, "new size"), path, oldRoot);
      if (!equal(fr, oldRoot)) throw new Error("the proof does not lead to the older root");
      if (!equal(sr, newRoot)) throw new Error("the proof does not lead to the newer root");
      return [null, path.length + " hashes lead to both signed roots"];
    });
    return "Verified: the tree of " + proof.new_size + " entries extends the tree of " +
      proof.old_size + ", unchanged.";
  }

  async function run() {
    const area = document.getElementById("proof-json");
    const verdict = document.getElementById("verdict");
    const steps = document.getElementById("steps");
    steps.replaceChildren();
    verdict.className = "verdict pending";
    verdict.textContent = "Checking…";
    async function step(label, fn) {
      const li = document.createElement("li");
      li.textContent = label;
      steps.appendChild(li);
      try {
        const [value, note] = await fn();
        li.className = "pass";
        li.textContent = label + ": " + note;
        return value;
      } catch (err) {
        li.className = "fail";
        li.textContent = label + ": " + err.message;
        throw err;
      }
    }
    try {
      if (!window.crypto || !crypto.subtle) throw new Error("this browser has no WebCrypto here");
      let doc;
      try {
        doc = JSON.parse(area.value);
      } catch (err) {
        throw new Error("the proof is not JSON");
      }
      const check = area.dataset.kind === "consistency" ? consistency : inclusion;
      const message = await check(doc, step);
      verdict.className = "verdict verified";
      verdict.dataset.state = "verified";
      verdict.textContent = "✔ " + message;
    } catch (err) {
      verdict.className = "verdict failed";
      verdict.dataset.state = "failed";
      verdict.textContent = "✘ Failed: " + err.message;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const button = document.getElementById("verify");
    if (button) {
      button.addEventListener("click", run);
      run();
    }
  });
})();
