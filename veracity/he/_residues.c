/* veracity.he._residues: exact arithmetic on the RNS residues of CKKS ciphertexts.
 *
 * A CKKS ciphertext in NTT form is, per polynomial and prime q, N residues modulo q; a
 * product by an integer constant and a sum are the same operation on every residue, and
 * the square of a two-part ciphertext is three coefficient-wise products. SEAL's evaluator
 * performs one such operation per call (a full pass over the ciphertext); a layer of a
 * network is thousands. Here a layer is one call: a sparse integer matrix times rows of
 * residues, or the sums of four squares, with every result reduced once, exactly (the
 * same residues SEAL's sequence of calls gives; veracity/he/residues.py checks the shapes
 * and bounds, tests/he/test_residues.py compares with Python integers and with SEAL).
 *
 * Bounds the caller keeps: moduli odd and below 2**60; integer weights |w| < 2**31 with
 * sum |w| < 2**33 per output row; N a multiple of 16. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "blake2.h"

#ifndef __SIZEOF_INT128__
#error "the residue kernels need 128-bit integers (gcc or clang on a 64-bit target)"
#endif

typedef unsigned __int128 u128;
typedef __int128 i128;

/* r = floor(2**128 / q); offset: a multiple of q above 2**94 (makes signed sums positive) */
typedef struct { uint64_t q, r0, r1; u128 offset; } Modulus;

static Modulus modulus_of(uint64_t q) {
  Modulus m;
  u128 ratio = ((u128)0 - 1) / q; /* floor((2**128 - 1) / q) == floor(2**128 / q): q odd */
  m.q = q; m.r0 = (uint64_t)ratio; m.r1 = (uint64_t)(ratio >> 64);
  m.offset = (((u128)1 << 94) / q + 1) * q;
  return m;
}

/* x mod q for any 128-bit x (Barrett, SEAL's barrett_reduce_128 with a final loop). */
static inline uint64_t reduce128(u128 x, const Modulus *m) {
  uint64_t lo = (uint64_t)x, hi = (uint64_t)(x >> 64);
  uint64_t carry = (uint64_t)(((u128)lo * m->r0) >> 64);
  u128 t2 = (u128)lo * m->r1;
  uint64_t tmp1;
  uint64_t c1 = __builtin_add_overflow((uint64_t)t2, carry, &tmp1);
  uint64_t tmp3 = (uint64_t)(t2 >> 64) + c1;
  u128 t4 = (u128)hi * m->r0;
  uint64_t unused;
  uint64_t c2 = __builtin_add_overflow(tmp1, (uint64_t)t4, &unused);
  carry = (uint64_t)(t4 >> 64) + c2;
  uint64_t quotient = hi * m->r1 + tmp3 + carry;
  uint64_t r = lo - quotient * m->q; /* below 3q: the estimate is short by at most 2 */
  r = r >= m->q ? r - m->q : r;
  return r >= m->q ? r - m->q : r;
}

#define CHUNK 256
#define LANES 16

#if defined(__x86_64__)
#include <immintrin.h>
#endif

/* lo[j] = sum_k w[k] * (x_k[j] mod 2**30), hi[j] = sum_k w[k] * (x_k[j] >> 30), j < LANES:
 * exact in 64 bits for |w| < 2**31, residues below 2**60 and sum |w| < 2**33. */
typedef void (*lanes_fn)(const uint64_t *buf, size_t stride, const int32_t *w, const int32_t *cols,
                         int32_t begin, int32_t end, size_t j0, int64_t *lo, int64_t *hi);

static void lanes_portable(const uint64_t *buf, size_t stride, const int32_t *w, const int32_t *cols,
                           int32_t begin, int32_t end, size_t j0, int64_t *lo, int64_t *hi) {
  const uint64_t low = (1ULL << 30) - 1;
  for (int jj = 0; jj < LANES; jj++) { lo[jj] = 0; hi[jj] = 0; }
  for (int32_t k = begin; k < end; k++) {
    const uint64_t *xi = buf + (size_t)cols[k] * stride + j0;
    int64_t wk = w[k];
    for (int jj = 0; jj < LANES; jj++) {
      lo[jj] += wk * (int64_t)(xi[jj] & low);
      hi[jj] += wk * (int64_t)(xi[jj] >> 30);
    }
  }
}

#if defined(__x86_64__)
__attribute__((target("avx2")))
static void lanes_avx2(const uint64_t *buf, size_t stride, const int32_t *w, const int32_t *cols,
                       int32_t begin, int32_t end, size_t j0, int64_t *lo, int64_t *hi) {
  const __m256i low = _mm256_set1_epi64x((1LL << 30) - 1);
  __m256i l0 = _mm256_setzero_si256(), l1 = l0, l2 = l0, l3 = l0;
  __m256i h0 = l0, h1 = l0, h2 = l0, h3 = l0;
  for (int32_t k = begin; k < end; k++) {
    const __m256i *xi = (const __m256i *)(buf + (size_t)cols[k] * stride + j0);
    const __m256i wk = _mm256_set1_epi64x((int64_t)w[k]); /* vpmuldq: low 32 bits, signed */
    __m256i x0 = _mm256_loadu_si256(xi), x1 = _mm256_loadu_si256(xi + 1);
    __m256i x2 = _mm256_loadu_si256(xi + 2), x3 = _mm256_loadu_si256(xi + 3);
    l0 = _mm256_add_epi64(l0, _mm256_mul_epi32(_mm256_and_si256(x0, low), wk));
    l1 = _mm256_add_epi64(l1, _mm256_mul_epi32(_mm256_and_si256(x1, low), wk));
    l2 = _mm256_add_epi64(l2, _mm256_mul_epi32(_mm256_and_si256(x2, low), wk));
    l3 = _mm256_add_epi64(l3, _mm256_mul_epi32(_mm256_and_si256(x3, low), wk));
    h0 = _mm256_add_epi64(h0, _mm256_mul_epi32(_mm256_srli_epi64(x0, 30), wk));
    h1 = _mm256_add_epi64(h1, _mm256_mul_epi32(_mm256_srli_epi64(x1, 30), wk));
    h2 = _mm256_add_epi64(h2, _mm256_mul_epi32(_mm256_srli_epi64(x2, 30), wk));
    h3 = _mm256_add_epi64(h3, _mm256_mul_epi32(_mm256_srli_epi64(x3, 30), wk));
  }
  _mm256_storeu_si256((__m256i *)lo, l0); _mm256_storeu_si256((__m256i *)(lo + 4), l1);
  _mm256_storeu_si256((__m256i *)(lo + 8), l2); _mm256_storeu_si256((__m256i *)(lo + 12), l3);
  _mm256_storeu_si256((__m256i *)hi, h0); _mm256_storeu_si256((__m256i *)(hi + 4), h1);
  _mm256_storeu_si256((__m256i *)(hi + 8), h2); _mm256_storeu_si256((__m256i *)(hi + 12), h3);
}
#endif

static lanes_fn lanes_kernel = lanes_portable;

/* out[o][row][j] = constants[o][row] + sum_k w[k] * x[cols[k]][row][j] mod q[row] over k in
 * [starts[o], starts[o+1]): residues split in 30-bit halves, each half's products summed exactly in
 * 64 bits, the halves joined and reduced once. The rows' chunks are copied side by side
 * (buf, padded by CHUNK + 8 words against cache-set conflicts), and n is a multiple of
 * LANES (checked by the caller). */
static void linear_rows(const uint64_t *x, size_t n_in, size_t rows, size_t n,
                        const int32_t *w, const int32_t *cols, const int32_t *starts,
                        size_t n_out, const Modulus *mod, const uint64_t *constants, uint64_t *out,
                        uint64_t *buf) {
  const size_t stride = CHUNK + 8;
  int64_t lo[LANES], hi[LANES];
  for (size_t row = 0; row < rows; row++) {
    const Modulus *m = &mod[row];
    for (size_t c0 = 0; c0 < n; c0 += CHUNK) {
      size_t len = n - c0 < CHUNK ? n - c0 : CHUNK;
      for (size_t i = 0; i < n_in; i++)
        memcpy(buf + i * stride, x + (i * rows + row) * n + c0, len * sizeof(uint64_t));
      for (size_t o = 0; o < n_out; o++) {
        uint64_t *y = out + (o * rows + row) * n + c0;
        const u128 constant = constants[o * rows + row];
        for (size_t j0 = 0; j0 < len; j0 += LANES) {
          lanes_kernel(buf, stride, w, cols, starts[o], starts[o + 1], j0, lo, hi);
          for (int jj = 0; jj < LANES; jj++) {
            /* |hi * 2**30 + lo| < 2**94: shifted up by a multiple of q, never negative */
            i128 v = ((i128)hi[jj] << 30) + lo[jj];
            y[j0 + jj] = reduce128((u128)(v + (i128)m->offset) + constant, m);
          }
        }
      }
    }
  }
}

/* out[w][k][p][j] = sum over the window's four units u of the k-th part of u's square
 * (c0*c0, 2*c0*c1, c1*c1) mod q[p]: SEAL's square of a two-part ciphertext, then sums. */
static void pooled_squares_rows(const uint64_t *z, size_t primes, size_t n, const int32_t *windows,
                                size_t n_windows, const Modulus *mod, uint64_t *out) {
  for (size_t w = 0; w < n_windows; w++) {
    for (size_t p = 0; p < primes; p++) {
      const Modulus *m = &mod[p];
      uint64_t *d0 = out + ((w * 3 + 0) * primes + p) * n;
      uint64_t *d1 = out + ((w * 3 + 1) * primes + p) * n;
      uint64_t *d2 = out + ((w * 3 + 2) * primes + p) * n;
      const uint64_t *a[4], *b[4];
      for (int u = 0; u < 4; u++) {
        size_t unit = (size_t)windows[w * 4 + u];
        a[u] = z + ((unit * 2 + 0) * primes + p) * n;
        b[u] = z + ((unit * 2 + 1) * primes + p) * n;
      }
      for (size_t j = 0; j < n; j++) {
        u128 s0 = 0, s1 = 0, s2 = 0;
        for (int u = 0; u < 4; u++) {
          uint64_t c0 = a[u][j], c1 = b[u][j];
          s0 += (u128)c0 * c0;
          s1 += (u128)c0 * c1;
          s2 += (u128)c1 * c1;
        }
        d0[j] = reduce128(s0, m);
        d1[j] = reduce128(s1 << 1, m);
        d2[j] = reduce128(s2, m);
      }
    }
  }
}

/* The product of four sizes, or SIZE_MAX where it overflows (no buffer is that large). */
static size_t product_of(size_t a, size_t b, size_t c, size_t d) {
  size_t ab, abc, abcd;
  if (__builtin_mul_overflow(a, b, &ab) || __builtin_mul_overflow(ab, c, &abc) ||
      __builtin_mul_overflow(abc, d, &abcd))
    return SIZE_MAX;
  return abcd;
}

static int moduli_of(Py_buffer *buffer, size_t count, Modulus *mod) {
  if ((size_t)buffer->len != count * sizeof(uint64_t)) {
    PyErr_SetString(PyExc_ValueError, "one modulus per row is needed");
    return -1;
  }
  const uint64_t *q = (const uint64_t *)buffer->buf;
  for (size_t i = 0; i < count; i++) {
    if (q[i] < 3 || q[i] >= (1ULL << 60) || !(q[i] & 1)) {
      PyErr_SetString(PyExc_ValueError, "moduli must be odd and below 2**60");
      return -1;
    }
    mod[i] = modulus_of(q[i]);
  }
  return 0;
}

static PyObject *linear(PyObject *self, PyObject *args) {
  (void)self;
  Py_buffer x, w, cols, starts, q, constants, out;
  Py_ssize_t n_in, rows, n;
  if (!PyArg_ParseTuple(args, "y*nnny*y*y*y*y*w*", &x, &n_in, &rows, &n, &w, &cols, &starts, &q,
                        &constants, &out))
    return NULL;
  PyObject *result = NULL;
  Modulus *mod = NULL;
  uint64_t *buf = NULL;
  size_t n_out = (size_t)starts.len / sizeof(int32_t) - 1;
  size_t nnz = (size_t)w.len / sizeof(int32_t);
  const int32_t *col = (const int32_t *)cols.buf, *start = (const int32_t *)starts.buf;
  if (n_in < 1 || rows < 1 || n < 1 || n % LANES || starts.len % sizeof(int32_t) ||
      starts.len < (Py_ssize_t)(2 * sizeof(int32_t)) || w.len % sizeof(int32_t) ||
      nnz > INT32_MAX ||
      (size_t)x.len != product_of((size_t)n_in, (size_t)rows, (size_t)n, sizeof(uint64_t)) ||
      (size_t)out.len != product_of(n_out, (size_t)rows, (size_t)n, sizeof(uint64_t)) ||
      (size_t)cols.len != nnz * sizeof(int32_t) ||
      (size_t)constants.len != product_of(n_out, (size_t)rows, 1, sizeof(uint64_t))) {
    PyErr_SetString(PyExc_ValueError, "buffer sizes do not match the shapes");
    goto done;
  }
  /* Every row's range of weights within [0, nnz], before any weight is read. */
  if (start[0] != 0 || (size_t)start[n_out] != nnz) {
    PyErr_SetString(PyExc_ValueError, "row starts must run from 0 to the number of weights");
    goto done;
  }
  for (size_t o = 0; o < n_out; o++) {
    if (start[o + 1] < start[o] || (size_t)start[o + 1] > nnz) {
      PyErr_SetString(PyExc_ValueError, "row starts must not decrease");
      goto done;
    }
  }
  for (size_t o = 0; o < n_out; o++) {
    int64_t total = 0;
    for (int32_t k = start[o]; k < start[o + 1]; k++) {
      int64_t v = ((const int32_t *)w.buf)[k];
      if (v == INT32_MIN) { PyErr_SetString(PyExc_ValueError, "a weight is -2**31"); goto done; }
      total += v < 0 ? -v : v;
      if (col[k] < 0 || col[k] >= n_in) { PyErr_SetString(PyExc_ValueError, "input index out of range"); goto done; }
    }
    if (total >= (1LL << 33)) { PyErr_SetString(PyExc_ValueError, "a row's weights sum to 2**33 or more"); goto done; }
  }
  mod = PyMem_Malloc((size_t)rows * sizeof(Modulus));
  buf = PyMem_Malloc((size_t)n_in * (CHUNK + 8) * sizeof(uint64_t));
  if (!mod || !buf) { PyErr_NoMemory(); goto done; }
  if (moduli_of(&q, (size_t)rows, mod) < 0) goto done;
  for (size_t k = 0; k < n_out * (size_t)rows; k++) {
    if (((const uint64_t *)constants.buf)[k] >= mod[k % (size_t)rows].q) {
      PyErr_SetString(PyExc_ValueError, "a constant is not a residue of its row's modulus");
      goto done;
    }
  }
  Py_BEGIN_ALLOW_THREADS
  linear_rows((const uint64_t *)x.buf, (size_t)n_in, (size_t)rows, (size_t)n, (const int32_t *)w.buf,
              col, start, n_out, mod, (const uint64_t *)constants.buf, (uint64_t *)out.buf, buf);
  Py_END_ALLOW_THREADS
  result = Py_None;
  Py_INCREF(result);
done:
  PyMem_Free(mod);
  PyMem_Free(buf);
  PyBuffer_Release(&x); PyBuffer_Release(&w); PyBuffer_Release(&cols);
  PyBuffer_Release(&starts); PyBuffer_Release(&q); PyBuffer_Release(&constants);
  PyBuffer_Release(&out);
  return result;
}

static PyObject *pooled_squares(PyObject *self, PyObject *args) {
  (void)self;
  Py_buffer z, windows, q, out;
  Py_ssize_t units, primes, n;
  if (!PyArg_ParseTuple(args, "y*nnny*y*w*", &z, &units, &primes, &n, &windows, &q, &out)) return NULL;
  PyObject *result = NULL;
  Modulus *mod = NULL;
  size_t n_windows = (size_t)windows.len / (4 * sizeof(int32_t));
  const int32_t *index = (const int32_t *)windows.buf;
  if (units < 1 || primes < 1 || n < 1 ||
      windows.len % (Py_ssize_t)(4 * sizeof(int32_t)) ||
      (size_t)z.len != product_of((size_t)units * 2, (size_t)primes, (size_t)n, sizeof(uint64_t)) ||
      (size_t)out.len != product_of(n_windows * 3, (size_t)primes, (size_t)n, sizeof(uint64_t))) {
    PyErr_SetString(PyExc_ValueError, "buffer sizes do not match the shapes");
    goto done;
  }
  for (size_t k = 0; k < n_windows * 4; k++) {
    if (index[k] < 0 || index[k] >= units) { PyErr_SetString(PyExc_ValueError, "unit index out of range"); goto done; }
  }
  mod = PyMem_Malloc((size_t)primes * sizeof(Modulus));
  if (!mod) { PyErr_NoMemory(); goto done; }
  if (moduli_of(&q, (size_t)primes, mod) < 0) goto done;
  Py_BEGIN_ALLOW_THREADS
  pooled_squares_rows((const uint64_t *)z.buf, (size_t)primes, (size_t)n, index, n_windows, mod, (uint64_t *)out.buf);
  Py_END_ALLOW_THREADS
  result = Py_None;
  Py_INCREF(result);
done:
  PyMem_Free(mod);
  PyBuffer_Release(&z); PyBuffer_Release(&windows); PyBuffer_Release(&q); PyBuffer_Release(&out);
  return result;
}

/* SEAL's Blake2xbPRNG stream for a 64-byte seed: blake2xb(4096 bytes, input = the counter as
 * 8 bytes little-endian, key = the seed) for counter 0, 1, 2, ..., concatenated; the first
 * `length` bytes (a multiple of 4096). */
static PyObject *blake2xb_stream(PyObject *self, PyObject *args) {
  (void)self;
  Py_buffer seed;
  Py_ssize_t length;
  if (!PyArg_ParseTuple(args, "y*n", &seed, &length)) return NULL;
  PyObject *result = NULL;
  if (seed.len != 64 || length < 0 || length % 4096) {
    PyErr_SetString(PyExc_ValueError, "a 64-byte seed and a multiple of 4096 bytes are needed");
    goto done;
  }
  result = PyBytes_FromStringAndSize(NULL, length);
  if (!result) goto done;
  uint8_t *out = (uint8_t *)PyBytes_AS_STRING(result);
  int failed = 0;
  Py_BEGIN_ALLOW_THREADS
  for (uint64_t counter = 0; (Py_ssize_t)(counter * 4096) < length; counter++) {
    uint8_t input[8];
    for (int b = 0; b < 8; b++) input[b] = (uint8_t)(counter >> (8 * b));
    if (blake2xb(out + counter * 4096, 4096, input, sizeof input, seed.buf, 64) != 0) {
      failed = 1;
      break;
    }
  }
  Py_END_ALLOW_THREADS
  if (failed) {
    Py_CLEAR(result);
    PyErr_SetString(PyExc_RuntimeError, "blake2xb failed");
  }
done:
  PyBuffer_Release(&seed);
  return result;
}

/* Tests run the exactness checks on both inner kernels: "portable" or (where the CPU has it)
 * "avx2". */
static PyObject *use_vector_kernel(PyObject *self, PyObject *args) {
  (void)self;
  const char *name;
  if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
  if (strcmp(name, "portable") == 0) {
    lanes_kernel = lanes_portable;
#if defined(__x86_64__)
  } else if (strcmp(name, "avx2") == 0 && __builtin_cpu_supports("avx2")) {
    lanes_kernel = lanes_avx2;
#endif
  } else {
    PyErr_SetString(PyExc_ValueError, "no such kernel on this machine");
    return NULL;
  }
  Py_RETURN_NONE;
}

static PyObject *vector_kernel(PyObject *self, PyObject *args) {
  (void)self; (void)args;
  return PyUnicode_FromString(lanes_kernel == lanes_portable ? "portable" : "avx2");
}

static PyMethodDef methods[] = {
  {"vector_kernel", vector_kernel, METH_NOARGS, "Which inner kernel this machine runs."},
  {"blake2xb_stream", blake2xb_stream, METH_VARARGS, "SEAL's Blake2xbPRNG output for a seed."},
  {"use_vector_kernel", use_vector_kernel, METH_VARARGS, "Choose the inner kernel (tests)."},
  {"linear", linear, METH_VARARGS, "Sparse integer matrix times residue rows, mod q per row."},
  {"pooled_squares", pooled_squares, METH_VARARGS, "Sums of four ciphertext squares, mod q."},
  {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_residues", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__residues(void) {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2")) lanes_kernel = lanes_avx2;
#endif
  return PyModule_Create(&module);
}
