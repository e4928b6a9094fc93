/* _core.c -- the one CPython / NumPy binding of the zipar C core.
 *
 * Converts and checks arguments, releases the GIL around C work, maps zp_status to Python
 * exceptions. All policy and validation with good messages lives in the Python layer; the checks
 * here only guarantee that the core never sees memory it could read out of bounds. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include "matmul.h"
#include "zipar.h"

#include <stddef.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* ================================================================ the boundary's layouts
 *
 * Cache.forward reads an (n, ZP_QUERY_FIELDS) int32 array in place as zp_query records, and
 * Session.step an (n, ZP_CELL_FIELDS) int32 array as cells: pin both layouts here. Every other
 * struct (zp_config, zp_sampling, zp_policy, zp_capture, zp_stats) is filled or read field by
 * field from keyword arguments and dicts, never cast. */
_Static_assert(sizeof(int32_t) == 4, "int32 words");
_Static_assert(sizeof(zp_query) == ZP_QUERY_FIELDS * sizeof(int32_t), "zp_query: packed int32s");
_Static_assert(offsetof(zp_query, image) == 0 * sizeof(int32_t), "zp_query.image is column 0");
_Static_assert(offsetof(zp_query, pos) == 1 * sizeof(int32_t), "zp_query.pos is column 1");
_Static_assert(offsetof(zp_query, token) == 2 * sizeof(int32_t), "zp_query.token is column 2");
_Static_assert(offsetof(zp_query, chain) == 3 * sizeof(int32_t), "zp_query.chain is column 3");
_Static_assert(offsetof(zp_query, want_logits) == 4 * sizeof(int32_t),
               "zp_query.want_logits is column 4");
_Static_assert(offsetof(zp_query, guided) == 5 * sizeof(int32_t), "zp_query.guided is column 5");
_Static_assert(ZP_CELL_FIELDS == 3 && ZP_TRACE_FIELDS == 6, "cells and trace records");
_Static_assert(ZP_PROXY_ABOVE == 0,
               "a Session given no proxy (0) feeds the published code's proxy");

/* ================================================================ errors and arrays */

static PyObject *raise_status(zp_status st) {
    const char *msg = zp_last_error();
    if (!msg || !*msg) msg = zp_status_string(st);
    switch (st) {
    case ZP_ERR_ARG: PyErr_SetString(PyExc_ValueError, msg); break;
    case ZP_ERR_NOMEM: PyErr_SetString(PyExc_MemoryError, msg); break;
    case ZP_ERR_ABORTED: PyErr_SetString(PyExc_KeyboardInterrupt, msg); break;
    default: PyErr_SetString(PyExc_RuntimeError, msg); break;
    }
    return NULL;
}

/* Borrowed view check: a C-contiguous, aligned array of the given dtype and element count. */
static int check_array(PyObject *o, int typenum, npy_intp count, const char *what) {
    if (!PyArray_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy array", what);
        return 0;
    }
    PyArrayObject *a = (PyArrayObject *)o;
    if (PyArray_TYPE(a) != typenum || !PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a)) {
        PyErr_Format(PyExc_TypeError, "%s must be a C-contiguous array of %s", what,
                     typenum == NPY_FLOAT32   ? "float32"
                     : typenum == NPY_INT32   ? "int32"
                     : typenum == NPY_UINT16  ? "uint16 (bfloat16 bits)"
                     : typenum == NPY_FLOAT16 ? "float16"
                     : typenum == NPY_UINT8   ? "uint8"
                     : typenum == NPY_UINT32  ? "uint32"
                                              : "the expected dtype");
        return 0;
    }
    if (count >= 0 && PyArray_SIZE(a) != count) {
        PyErr_Format(PyExc_ValueError, "%s has %zd elements, expected %zd", what,
                     (Py_ssize_t)PyArray_SIZE(a), (Py_ssize_t)count);
        return 0;
    }
    return 1;
}

#define DATA(o) PyArray_DATA((PyArrayObject *)(o))

/* After a failed PyArg_ParseTuple: an integer too large for its C type is a ValueError (a value
 * out of range), not an OverflowError; other errors pass unchanged. Returns NULL. */
static PyObject *parse_failed(void) {
    if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        PyObject *msg = value ? PyObject_Str(value) : NULL;
        if (msg)
            PyErr_Format(PyExc_ValueError, "an integer argument is out of range: %U", msg);
        else
            PyErr_SetString(PyExc_ValueError, "an integer argument is out of range");
        Py_XDECREF(msg);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
    }
    return NULL;
}

/* An exact int (not bool, not float) in [lo, hi] -> *out; else TypeError / ValueError naming it. */
static int get_u64(PyObject *o, const char *what, unsigned long long hi, unsigned long long *out) {
    if (!PyLong_Check(o) || PyBool_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, got %.100s", what, Py_TYPE(o)->tp_name);
        return 0;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred()) return 0;
    unsigned long long u = 0;
    if (overflow > 0) { /* above LLONG_MAX: only a full 64-bit range can hold it */
        u = PyLong_AsUnsignedLongLong(o);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            overflow = -1;
        }
    } else if (overflow == 0 && v >= 0) {
        u = (unsigned long long)v;
    }
    if (overflow < 0 || (overflow == 0 && v < 0) || u > hi) {
        PyErr_Format(PyExc_ValueError, "%s must be in [0, %llu], got %R", what, hi, o);
        return 0;
    }
    *out = u;
    return 1;
}

/* ================================================================ Model */

typedef struct {
    PyObject_HEAD zp_model *m;
    PyObject *keep; /* tuple of the weight arrays: the model borrows their memory */
} ModelObject;

static void Model_dealloc(ModelObject *self) {
    zp_model_free(self->m);
    Py_XDECREF(self->keep);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Pops an optional int or float keyword from a dict (a copy of the caller's kwargs). */
static int pop_number(PyObject *kw, const char *key, int is_float, void *out) {
    PyObject *v = kw ? PyDict_GetItemString(kw, key) : NULL;
    if (!v) return 1;
    if (is_float) {
        double d = PyFloat_AsDouble(v);
        if (d == -1.0 && PyErr_Occurred()) return 0;
        *(float *)out = (float)d;
    } else {
        long l = PyLong_AsLong(v);
        if (l == -1 && PyErr_Occurred()) return 0;
        if (l < INT32_MIN || l > INT32_MAX) {
            PyErr_Format(PyExc_OverflowError, "%s out of range", key);
            return 0;
        }
        *(int *)out = (int)l;
    }
    return PyDict_DelItemString(kw, key) == 0;
}

/* Model(weights, *, dim, n_layer, n_head, n_kv_head, head_dim, hidden, vocab, cls_token_num,
 *       grid_h, grid_w, eor, eor_token, norm_eps, rope_base,
 *       rope_1d=0, qk_norm=0, qk_norm_eps=0, swin_norm=0, vis_lo=0, vis_hi=0, wtype=ZP_WTYPE_F32):
 * the zp_config
 * fields by name (the last six are the model-family fields, optional: 0 keeps LlamaGen's
 * behaviour; wtype: the matrices' storage type); weights: a sequence of arrays ordered as
 * tok_embeddings, norm, output,
 * then per layer the zp_layer_weights fields in their declaration order
 * (zipar.model.LAYER_KEYS, then with qk_norm the q/k-norm weight and bias rows). The norms are
 * float32; the matrices are float32, uint16 (bfloat16 bit patterns) or float16 as wtype says. */
static int Model_init(ModelObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"weights",       "dim",      "n_layer",   "n_head",
                             "n_kv_head",     "head_dim", "hidden",    "vocab",
                             "cls_token_num", "grid_h",   "grid_w",    "eor",
                             "eor_token",     "norm_eps", "rope_base", NULL};
    zp_config c = {0};
    PyObject *arrays;
    int wtype = ZP_WTYPE_F32;
    PyObject *kw2 = kw ? PyDict_Copy(kw) : NULL;
    if (kw && !kw2) return -1;
    if (!pop_number(kw2, "rope_1d", 0, &c.rope_1d) || !pop_number(kw2, "qk_norm", 0, &c.qk_norm) ||
        !pop_number(kw2, "qk_norm_eps", 1, &c.qk_norm_eps) ||
        !pop_number(kw2, "swin_norm", 0, &c.swin_norm) ||
        !pop_number(kw2, "vis_lo", 0, &c.vis_lo) || !pop_number(kw2, "vis_hi", 0, &c.vis_hi) ||
        !pop_number(kw2, "wtype", 0, &wtype)) {
        Py_XDECREF(kw2);
        parse_failed();
        return -1;
    }
    int ok = PyArg_ParseTupleAndKeywords(
        args, kw2, "O$iiiiiiiiiiiiff", kwlist, &arrays, &c.dim, &c.n_layer, &c.n_head, &c.n_kv_head,
        &c.head_dim, &c.hidden, &c.vocab, &c.cls_token_num, &c.grid_h, &c.grid_w, &c.eor,
        &c.eor_token, &c.norm_eps, &c.rope_base);
    Py_XDECREF(kw2);
    if (!ok) {
        parse_failed();
        return -1;
    }
    /* every zp_config field is required (the format makes them optional only so that wtype
     * can be) */
    static const char *required[] = {
        "dim",           "n_layer", "n_head", "n_kv_head", "head_dim",  "hidden",   "vocab",
        "cls_token_num", "grid_h",  "grid_w", "eor",       "eor_token", "norm_eps", "rope_base"};
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++) {
        PyObject *v = kw ? PyDict_GetItemString(kw, required[i]) : NULL;
        if (!v) {
            PyErr_Format(PyExc_TypeError, "Model() missing required keyword argument '%s'",
                         required[i]);
            return -1;
        }
    }
    int mtype = wtype == ZP_WTYPE_F32    ? NPY_FLOAT32
                : wtype == ZP_WTYPE_BF16 ? NPY_UINT16
                : wtype == ZP_WTYPE_F16  ? NPY_FLOAT16
                                         : -1;
    if (mtype < 0) {
        PyErr_Format(PyExc_ValueError, "unknown weight type %d", wtype);
        return -1;
    }
    zp_status cst = zp_config_check(&c); /* before any size below is computed from it */
    if (cst) {
        raise_status(cst);
        return -1;
    }
    if (self->m) {
        PyErr_SetString(PyExc_RuntimeError, "Model already initialised");
        return -1;
    }
    PyObject *t = PySequence_Tuple(arrays);
    if (!t) return -1;
    const int per = c.qk_norm ? 11 : 7; /* zp_layer_weights fields this config reads */
    if (c.n_layer < 1 || PyTuple_GET_SIZE(t) != 3 + per * (Py_ssize_t)c.n_layer) {
        Py_DECREF(t);
        PyErr_SetString(PyExc_ValueError, "wrong number of weight arrays");
        return -1;
    }
    npy_intp D = c.dim, V = c.vocab, HD = c.head_dim, F = c.hidden;
    npy_intp QKV = (npy_intp)(c.n_head + 2 * c.n_kv_head) * HD;
    if (!check_array(PyTuple_GET_ITEM(t, 0), mtype, V * D, "tok_embeddings") ||
        !check_array(PyTuple_GET_ITEM(t, 1), NPY_FLOAT32, D, "norm") ||
        !check_array(PyTuple_GET_ITEM(t, 2), mtype, V * D, "output")) {
        Py_DECREF(t);
        return -1;
    }
    zp_layer_weights *L = PyMem_Calloc(c.n_layer, sizeof *L);
    if (!L) {
        Py_DECREF(t);
        PyErr_NoMemory();
        return -1;
    }
    npy_intp NQ = (npy_intp)c.n_head * HD, NK = (npy_intp)c.n_kv_head * HD;
    npy_intp sizes[11] = {D, QKV * D, D * c.n_head * HD, D, F * D, F * D, D * F, NQ, NQ, NK, NK};
    const char *names[11] = {"attention_norm", "wqkv",     "wo",       "ffn_norm", "w1", "w3", "w2",
                             "q_norm_w",       "q_norm_b", "k_norm_w", "k_norm_b"};
    for (int l = 0; l < c.n_layer; l++) {
        const void *ptrs[11] = {0};
        for (int j = 0; j < per; j++) {
            PyObject *a = PyTuple_GET_ITEM(t, 3 + per * l + j);
            int norm = j == 0 || j == 3 || j >= 7; /* attention_norm, ffn_norm, q/k-norm rows */
            if (!check_array(a, norm ? NPY_FLOAT32 : mtype, sizes[j], names[j])) {
                PyMem_Free(L);
                Py_DECREF(t);
                return -1;
            }
            ptrs[j] = DATA(a);
        }
        L[l] = (zp_layer_weights){ptrs[0], ptrs[1], ptrs[2], ptrs[3], ptrs[4], ptrs[5],
                                  ptrs[6], ptrs[7], ptrs[8], ptrs[9], ptrs[10]};
    }
    zp_weights w = {.tok_embeddings = DATA(PyTuple_GET_ITEM(t, 0)),
                    .layers = L,
                    .norm = DATA(PyTuple_GET_ITEM(t, 1)),
                    .output = DATA(PyTuple_GET_ITEM(t, 2)),
                    .wtype = wtype};
    zp_status st = zp_model_new(&c, &w, &self->m);
    PyMem_Free(L);
    if (st) {
        Py_DECREF(t);
        raise_status(st);
        return -1;
    }
    self->keep = t;
    return 0;
}

static PyTypeObject ModelType;

/* ================================================================ Cache */

typedef struct {
    PyObject_HEAD zp_cache *c;
    ModelObject *model;
    int busy;
} CacheObject;

static void Cache_dealloc(CacheObject *self) {
    zp_cache_free(self->c);
    Py_XDECREF(self->model);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Checks prefix arrays for n images; fills the pointers (NULL where None). */
static int prefix_args(const zp_config *cfg, int n, int guided, PyObject *cond, PyObject *unc,
                       PyObject *mask, const float **pc, const float **pu, const uint8_t **pm) {
    npy_intp need = (npy_intp)n * cfg->cls_token_num * cfg->dim;
    if (!check_array(cond, NPY_FLOAT32, need, "prefix_cond")) return 0;
    *pc = DATA(cond);
    *pu = NULL;
    *pm = NULL;
    if (guided) {
        if (!check_array(unc, NPY_FLOAT32, need, "prefix_uncond")) return 0;
        *pu = DATA(unc);
    }
    if (mask != Py_None) {
        if (!check_array(mask, NPY_UINT8, (npy_intp)n * cfg->cls_token_num, "prefix_mask"))
            return 0;
        *pm = DATA(mask);
    }
    return 1;
}

/* Token-id prefixes (zp_cache_new_ids): ids (n, P) int32, right-aligned, and lengths (n,) int32
 * per stream; the unconditional pair only when guided. Fills the pointers. */
static int ids_args(const zp_config *cfg, int n, int guided, PyObject *ids, PyObject *len,
                    PyObject *uids, PyObject *ulen, const int32_t **pi, const int32_t **pl,
                    const int32_t **pui, const int32_t **pul) {
    npy_intp need = (npy_intp)n * cfg->cls_token_num;
    if (!check_array(ids, NPY_INT32, need, "prefix_ids") ||
        !check_array(len, NPY_INT32, n, "prefix_len"))
        return 0;
    *pi = DATA(ids);
    *pl = DATA(len);
    *pui = *pul = NULL;
    if (guided) {
        if (!check_array(uids, NPY_INT32, need, "uncond_ids") ||
            !check_array(ulen, NPY_INT32, n, "uncond_len"))
            return 0;
        *pui = DATA(uids);
        *pul = DATA(ulen);
    }
    return 1;
}

/* Cache(model, n_images, guided, prefix_cond, prefix_uncond=None, prefix_mask=None, *,
 *       prefix_ids=None, prefix_len=None, uncond_ids=None, uncond_len=None,
 *       kv_type=ZP_WTYPE_F32): conditioning as embeddings, or (prefix_cond None) as token ids of
 * each stream's own length; kv_type: storage of the K/V cache (zp_cache_set_kv_type). */
static int Cache_init(CacheObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"model",         "n_images",    "guided",     "prefix_cond",
                             "prefix_uncond", "prefix_mask", "prefix_ids", "prefix_len",
                             "uncond_ids",    "uncond_len",  "kv_type",    NULL};
    ModelObject *model;
    int n, guided, kv_type = ZP_WTYPE_F32;
    PyObject *cond, *unc = Py_None, *mask = Py_None;
    PyObject *ids = Py_None, *len = Py_None, *uids = Py_None, *ulen = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!ipO|OO$OOOOi", kwlist, &ModelType, &model, &n,
                                     &guided, &cond, &unc, &mask, &ids, &len, &uids, &ulen,
                                     &kv_type)) {
        parse_failed();
        return -1;
    }
    if (self->c) {
        PyErr_SetString(PyExc_RuntimeError, "Cache already initialised");
        return -1;
    }
    const float *pc, *pu;
    const uint8_t *pm;
    if (n < 1) {
        PyErr_SetString(PyExc_ValueError, "n_images must be >= 1");
        return -1;
    }
    zp_status st;
    if (ids != Py_None) {
        const int32_t *pi, *pl, *pui, *pul;
        if (cond != Py_None || unc != Py_None || mask != Py_None) {
            PyErr_SetString(PyExc_ValueError, "give prefix embeddings or prefix_ids, not both");
            return -1;
        }
        if (!ids_args(zp_model_config(model->m), n, guided, ids, len, uids, ulen, &pi, &pl, &pui,
                      &pul))
            return -1;
        Py_BEGIN_ALLOW_THREADS st =
            zp_cache_new_ids(model->m, n, guided, pi, pl, pui, pul, &self->c);
        Py_END_ALLOW_THREADS
    } else {
        if (!prefix_args(zp_model_config(model->m), n, guided, cond, unc, mask, &pc, &pu, &pm))
            return -1;
        Py_BEGIN_ALLOW_THREADS st = zp_cache_new(model->m, n, guided, pc, pu, pm, &self->c);
        Py_END_ALLOW_THREADS
    }
    if (!st && (st = zp_cache_set_kv_type(self->c, kv_type))) {
        zp_cache_free(self->c);
        self->c = NULL;
    }
    if (st) {
        raise_status(st);
        return -1;
    }
    Py_INCREF(model);
    self->model = model;
    return 0;
}

static PyObject *Cache_kv_bytes(CacheObject *self, void *closure) {
    (void)closure;
    if (!self->c) {
        PyErr_SetString(PyExc_RuntimeError, "Cache not initialised");
        return NULL;
    }
    return PyLong_FromSize_t(zp_cache_kv_bytes(self->c));
}

static PyObject *Cache_kv_type(CacheObject *self, void *closure) {
    (void)closure;
    if (!self->c) {
        PyErr_SetString(PyExc_RuntimeError, "Cache not initialised");
        return NULL;
    }
    return PyLong_FromLong(zp_cache_kv_type(self->c));
}

static PyObject *Cache_slots(CacheObject *self, void *closure) {
    (void)closure;
    npy_intp dims[2] = {zp_cache_n_images(self->c), zp_seq_len(zp_model_config(self->model->m))};
    PyObject *a = PyArray_SimpleNewFromData(2, dims, NPY_INT32, zp_cache_slots(self->c));
    if (!a) return NULL;
    Py_INCREF(self);
    if (PyArray_SetBaseObject((PyArrayObject *)a, (PyObject *)self) < 0) {
        Py_DECREF(a);
        return NULL;
    }
    return a;
}

/* forward(queries int32 (n, 6), cfg_scale, capture=None) -> logits float32 (n_logits, vocab).
 * capture: (query int32 (k,), layer int32 (k,), head int32 (k,), out float32 (k, seq_len)). */
static PyObject *Cache_forward(CacheObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"queries", "cfg_scale", "capture", NULL};
    PyObject *qa, *capture = Py_None;
    float cfg_scale;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Of|O", kwlist, &qa, &cfg_scale, &capture))
        return parse_failed();
    if (!check_array(qa, NPY_INT32, -1, "queries")) return NULL;
    if (PyArray_NDIM((PyArrayObject *)qa) != 2 ||
        PyArray_DIM((PyArrayObject *)qa, 1) != ZP_QUERY_FIELDS) {
        PyErr_SetString(PyExc_ValueError, "queries must have shape (n, 6)");
        return NULL;
    }
    const zp_config *cfg = zp_model_config(self->model->m);
    int nq = (int)PyArray_DIM((PyArrayObject *)qa, 0);
    const zp_query *q = DATA(qa);
    int nl = 0;
    for (int i = 0; i < nq; i++) nl += q[i].want_logits != 0;
    zp_capture cap, *capp = NULL;
    if (capture != Py_None) {
        PyObject *cq, *cl, *ch, *co;
        if (!PyArg_ParseTuple(capture, "OOOO", &cq, &cl, &ch, &co)) return NULL;
        if (!check_array(cq, NPY_INT32, -1, "capture queries")) return NULL;
        npy_intp k = PyArray_SIZE((PyArrayObject *)cq);
        if (!check_array(cl, NPY_INT32, k, "capture layers") ||
            !check_array(ch, NPY_INT32, k, "capture heads") ||
            !check_array(co, NPY_FLOAT32, k * zp_seq_len(cfg), "capture output"))
            return NULL;
        cap = (zp_capture){(int)k, DATA(cq), DATA(cl), DATA(ch), DATA(co)};
        capp = &cap;
    }
    npy_intp dims[2] = {nl, cfg->vocab};
    PyObject *out = PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    if (!out) return NULL;
    if (self->busy) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_RuntimeError, "this cache is in use by another thread");
        return NULL;
    }
    self->busy = 1;
    Py_INCREF(qa);
    zp_status st;
    Py_BEGIN_ALLOW_THREADS st =
        zp_forward(self->model->m, self->c, q, nq, cfg_scale, DATA(out), capp);
    Py_END_ALLOW_THREADS Py_DECREF(qa);
    self->busy = 0;
    if (st) {
        Py_DECREF(out);
        return raise_status(st);
    }
    return out;
}

/* read_kv(layer) -> (k, v): float32 (n_streams, seq_len, n_kv_head*head_dim) copies of the keys
 * and values the layer holds (zp_cache_read_kv). */
static PyObject *Cache_read_kv(CacheObject *self, PyObject *args) {
    int layer;
    if (!PyArg_ParseTuple(args, "i", &layer)) return parse_failed();
    if (!self->c) {
        PyErr_SetString(PyExc_RuntimeError, "Cache not initialised");
        return NULL;
    }
    const zp_config *cfg = zp_model_config(self->model->m);
    npy_intp streams = (npy_intp)zp_cache_n_images(self->c) * (zp_cache_guided(self->c) ? 2 : 1);
    npy_intp dims[3] = {streams, zp_seq_len(cfg), (npy_intp)cfg->n_kv_head * cfg->head_dim};
    PyObject *k = PyArray_SimpleNew(3, dims, NPY_FLOAT32), *v = NULL;
    if (k) v = PyArray_SimpleNew(3, dims, NPY_FLOAT32);
    zp_status st = v ? zp_cache_read_kv(self->c, layer, DATA(k), DATA(v)) : ZP_OK;
    if (!v || st) {
        Py_XDECREF(k);
        Py_XDECREF(v);
        return v ? raise_status(st) : NULL;
    }
    return Py_BuildValue("(NN)", k, v);
}

static PyMethodDef Cache_methods[] = {{"forward", (PyCFunction)(void (*)(void))Cache_forward,
                                       METH_VARARGS | METH_KEYWORDS,
                                       "One pass over a batch of queries."},
                                      {"read_kv", (PyCFunction)Cache_read_kv, METH_VARARGS,
                                       "(k, v) float32 (n_streams, seq_len, kv_dim) of one layer."},
                                      {NULL, NULL, 0, NULL}};
static PyGetSetDef Cache_getset[] = {
    {"slots", (getter)Cache_slots, NULL, "(n_images, seq_len) int32 slot states (writable view)",
     NULL},
    {"kv_bytes", (getter)Cache_kv_bytes, NULL, "bytes of the K and V storage", NULL},
    {"kv_type", (getter)Cache_kv_type, NULL, "ZP_WTYPE_F32 or ZP_WTYPE_BF16: K/V storage", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

/* ================================================================ Session */

typedef struct {
    PyObject_HEAD zp_session *s;
    ModelObject *model;
    int n_images, H, W;
    int busy;
} SessionObject;

static void Session_dealloc(SessionObject *self) {
    zp_session_free(self->s);
    Py_XDECREF(self->model);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Session(model, n_images, prefix_cond, prefix_uncond, prefix_mask, sample_ids, *,
 *         prefix_ids, prefix_len, uncond_ids, uncond_len,   (token-id prefixes, see Cache)
 *         cfg_scale, cfg_interval, temperature, top_k, top_p, seed,   (zp_sampling, by name)
 *         kind, window, schedule, proxy, proxy_token, min_window, max_window, threshold,
 *         (zp_policy)
 *         trace=False, kv_type=ZP_WTYPE_F32)
 * Sampling fields left out take zp_sampling_default()'s values; policy fields left out are 0
 * (a kind ignores the fields it does not read, see zipar.h); kv_type: storage of the K/V cache
 * (zp_session_set_kv_type). */
static int Session_init(SessionObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {
        "model",       "n_images",   "prefix_cond", "prefix_uncond", "prefix_mask", "sample_ids",
        "prefix_ids",  "prefix_len", "uncond_ids",  "uncond_len",    "cfg_scale",   "cfg_interval",
        "temperature", "top_k",      "top_p",       "seed",          "kind",        "window",
        "schedule",    "proxy",      "proxy_token", "min_window",    "max_window",  "threshold",
        "trace",       "kv_type",    NULL};
    ModelObject *model;
    int n, trace = 0, kv_type = ZP_WTYPE_F32;
    PyObject *cond, *unc = Py_None, *mask = Py_None, *sids = Py_None;
    PyObject *pids = Py_None, *plen = Py_None, *uids = Py_None, *ulen = Py_None;
    zp_sampling sp = zp_sampling_default();
    zp_policy pol = {0};
    unsigned long long seed = sp.seed;
    PyObject *seed_obj = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!iO|OOO$OOOOfififOiiiiiiidpi", kwlist, &ModelType,
                                     &model, &n, &cond, &unc, &mask, &sids, &pids, &plen, &uids,
                                     &ulen, &sp.cfg_scale, &sp.cfg_interval, &sp.temperature,
                                     &sp.top_k, &sp.top_p, &seed_obj, &pol.kind, &pol.window,
                                     &pol.schedule, &pol.proxy, &pol.proxy_token, &pol.min_window,
                                     &pol.max_window, &pol.threshold, &trace, &kv_type)) {
        parse_failed();
        return -1;
    }
    if (seed_obj && !get_u64(seed_obj, "seed", UINT64_MAX, &seed)) return -1;
    if (self->s) {
        PyErr_SetString(PyExc_RuntimeError, "Session already initialised");
        return -1;
    }
    sp.seed = seed;
    if (n < 1) {
        PyErr_SetString(PyExc_ValueError, "n_images must be >= 1");
        return -1;
    }
    const zp_config *cfg = zp_model_config(model->m);
    const float *pc = NULL, *pu = NULL;
    const uint8_t *pm = NULL;
    const int32_t *pi = NULL, *pl = NULL, *pui = NULL, *pul = NULL;
    int guided = zp_sampling_guided(&sp);
    if (pids != Py_None) {
        if (cond != Py_None || unc != Py_None || mask != Py_None) {
            PyErr_SetString(PyExc_ValueError, "give prefix embeddings or prefix_ids, not both");
            return -1;
        }
        if (!ids_args(cfg, n, guided, pids, plen, uids, ulen, &pi, &pl, &pui, &pul)) return -1;
    } else if (!prefix_args(cfg, n, guided, cond, unc, mask, &pc, &pu, &pm))
        return -1;
    const uint32_t *ids = NULL;
    if (sids != Py_None) {
        if (!check_array(sids, NPY_UINT32, n, "sample_ids")) return -1;
        ids = DATA(sids);
    }
    zp_status st;
    Py_BEGIN_ALLOW_THREADS if (pi) st =
        zp_session_new_ids(model->m, n, pi, pl, pui, pul, ids, &sp, &pol, trace, &self->s);
    else st = zp_session_new(model->m, n, pc, pu, pm, ids, &sp, &pol, trace, &self->s);
    Py_END_ALLOW_THREADS if (!st && (st = zp_session_set_kv_type(self->s, kv_type))) {
        zp_session_free(self->s);
        self->s = NULL;
    }
    if (st) {
        raise_status(st);
        return -1;
    }
    Py_INCREF(model);
    self->model = model;
    self->n_images = n;
    self->H = cfg->grid_h;
    self->W = cfg->grid_w;
    return 0;
}

static int enter(SessionObject *self) {
    if (!self->s) {
        PyErr_SetString(PyExc_RuntimeError, "Session not initialised");
        return 0;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "this session is in use by another thread");
        return 0;
    }
    self->busy = 1;
    return 1;
}

/* run(max_passes=-1, callback=None): passes until done or max_passes; the GIL is released during
 * each pass and taken between passes to check for Ctrl-C and call callback(passes_done). On an
 * interrupt the session keeps everything decoded so far and KeyboardInterrupt propagates. */
static PyObject *Session_run(SessionObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"max_passes", "callback", NULL};
    long long max_passes = -1;
    PyObject *cb = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|LO", kwlist, &max_passes, &cb))
        return parse_failed();
    if (!enter(self)) return NULL;
    long long done = 0;
    zp_status st = ZP_OK;
    while (!zp_session_done(self->s) && (max_passes < 0 || done < max_passes)) {
        Py_BEGIN_ALLOW_THREADS st = zp_session_run_pass(self->s);
        Py_END_ALLOW_THREADS if (st) break;
        done++;
        if (PyErr_CheckSignals() < 0) {
            self->busy = 0;
            return NULL;
        }
        if (cb != Py_None) {
            PyObject *r = PyObject_CallFunction(cb, "L", done);
            if (!r) {
                self->busy = 0;
                return NULL;
            }
            Py_DECREF(r);
        }
    }
    self->busy = 0;
    if (st) return raise_status(st);
    return PyLong_FromLongLong(done);
}

/* step(cells int32 (n, 3)): one pass decoding exactly these cells. */
static PyObject *Session_step(SessionObject *self, PyObject *args) {
    PyObject *cells;
    if (!PyArg_ParseTuple(args, "O", &cells)) return NULL;
    if (!check_array(cells, NPY_INT32, -1, "cells")) return NULL;
    PyArrayObject *ca = (PyArrayObject *)cells;
    if (PyArray_NDIM(ca) != 2 || PyArray_DIM(ca, 1) != ZP_CELL_FIELDS) {
        PyErr_SetString(PyExc_ValueError, "cells must have shape (n, 3): image, row, col");
        return NULL;
    }
    if (!enter(self)) return NULL;
    Py_INCREF(cells);
    zp_status st;
    Py_BEGIN_ALLOW_THREADS st = zp_session_step(self->s, DATA(cells), (int)PyArray_DIM(ca, 0));
    Py_END_ALLOW_THREADS Py_DECREF(cells);
    self->busy = 0;
    if (st) return raise_status(st);
    Py_RETURN_NONE;
}

static PyObject *copy_int32(const int32_t *src, int nd, npy_intp *dims) {
    PyObject *a = PyArray_SimpleNew(nd, dims, NPY_INT32);
    if (!a) return NULL;
    npy_intp n = PyArray_SIZE((PyArrayObject *)a);
    if (n) memcpy(DATA(a), src, sizeof(int32_t) * n);
    return a;
}

static PyObject *Session_tokens(SessionObject *self, void *c) {
    (void)c;
    npy_intp d[3] = {self->n_images, self->H, self->W};
    return copy_int32(zp_session_tokens(self->s), 3, d);
}
static PyObject *Session_progress(SessionObject *self, void *c) {
    (void)c;
    npy_intp d[2] = {self->n_images, self->H};
    return copy_int32(zp_session_progress(self->s), 2, d);
}
static PyObject *Session_row_start(SessionObject *self, void *c) {
    (void)c;
    npy_intp d[2] = {self->n_images, self->H};
    return copy_int32(zp_session_row_start(self->s), 2, d);
}
static PyObject *Session_done(SessionObject *self, void *c) {
    (void)c;
    return PyBool_FromLong(zp_session_done(self->s));
}
static PyObject *Session_pass_queries(SessionObject *self, void *c) {
    (void)c;
    npy_intp d[1] = {(npy_intp)zp_session_stats(self->s)->passes};
    return copy_int32(zp_session_pass_queries(self->s), 1, d);
}
static PyObject *copy_int64(const int64_t *src, npy_intp n) {
    PyObject *a = PyArray_SimpleNew(1, &n, NPY_INT64);
    if (!a) return NULL;
    if (n) memcpy(DATA(a), src, sizeof(int64_t) * n);
    return a;
}
static PyObject *Session_image_passes(SessionObject *self, void *c) {
    (void)c;
    return copy_int64(zp_session_image_passes(self->s), self->n_images);
}
static PyObject *Session_image_queries(SessionObject *self, void *c) {
    (void)c;
    return copy_int64(zp_session_image_queries(self->s), self->n_images);
}
static PyObject *Session_trace(SessionObject *self, void *c) {
    (void)c;
    int64_t n;
    const int32_t *t = zp_session_trace(self->s, &n);
    npy_intp d[2] = {(npy_intp)n, ZP_TRACE_FIELDS};
    return copy_int32(t, 2, d);
}
static PyObject *Session_stats(SessionObject *self, void *c) {
    (void)c;
    const zp_stats *s = zp_session_stats(self->s);
    return Py_BuildValue(
        "{sLsLsLsLsLsLsLsLsLsdsdsd}", "forward_passes", (long long)s->passes, "queries",
        (long long)s->queries, "proxies", (long long)s->proxies, "refeeds", (long long)s->refeeds,
        "drafts_proposed", (long long)s->drafts_proposed, "drafts_accepted",
        (long long)s->drafts_accepted, "drafts_rejected", (long long)s->drafts_rejected,
        "resamples", (long long)s->resamples, "tokens_decoded", (long long)s->tokens_decoded,
        "forward_seconds", s->forward_seconds, "sample_seconds", s->sample_seconds,
        "engine_seconds", s->total_seconds);
}

static PyObject *Session_kv_bytes(SessionObject *self, void *c) {
    (void)c;
    if (!self->s) {
        PyErr_SetString(PyExc_RuntimeError, "Session not initialised");
        return NULL;
    }
    return PyLong_FromSize_t(zp_session_kv_bytes(self->s));
}

static PyMethodDef Session_methods[] = {
    {"run", (PyCFunction)(void (*)(void))Session_run, METH_VARARGS | METH_KEYWORDS,
     "Run passes of the built-in policy."},
    {"step", (PyCFunction)Session_step, METH_VARARGS, "One pass decoding the given cells."},
    {NULL, NULL, 0, NULL}};
static PyGetSetDef Session_getset[] = {
    {"tokens", (getter)Session_tokens, NULL, "(n, H, W) int32 copy; -1 = undecoded", NULL},
    {"progress", (getter)Session_progress, NULL, "(n, H) decoded cells per row", NULL},
    {"row_start", (getter)Session_row_start, NULL, "(n, H) pass of each row start", NULL},
    {"done", (getter)Session_done, NULL, "all cells decoded", NULL},
    {"pass_queries", (getter)Session_pass_queries, NULL, "queries per pass", NULL},
    {"image_passes", (getter)Session_image_passes, NULL,
     "(n,) passes until each image's last "
     "query",
     NULL},
    {"image_queries", (getter)Session_image_queries, NULL, "(n,) queries of each image", NULL},
    {"trace", (getter)Session_trace, NULL, "(n, 6) pass, image, row, col, role, token", NULL},
    {"stats", (getter)Session_stats, NULL, "counters", NULL},
    {"kv_bytes", (getter)Session_kv_bytes, NULL, "bytes of the K and V storage", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

/* ================================================================ module functions */

static PyObject *py_philox(PyObject *mod, PyObject *args) {
    (void)mod;
    unsigned int c0, c1, c2, c3, k0, k1;
    if (!PyArg_ParseTuple(args, "(IIII)(II)", &c0, &c1, &c2, &c3, &k0, &k1)) return NULL;
    uint32_t ctr[4] = {c0, c1, c2, c3}, key[2] = {k0, k1}, out[4];
    zp_philox4x32_10(ctr, key, out);
    return Py_BuildValue("(kkkk)", (unsigned long)out[0], (unsigned long)out[1],
                         (unsigned long)out[2], (unsigned long)out[3]);
}

static PyObject *py_uniform(PyObject *mod, PyObject *args) {
    (void)mod;
    PyObject *o[4];
    unsigned long long v[4];
    static const char *names[4] = {"seed", "sample_id", "pos", "draw"};
    if (!PyArg_ParseTuple(args, "OOOO", &o[0], &o[1], &o[2], &o[3])) return NULL;
    for (int i = 0; i < 4; i++)
        if (!get_u64(o[i], names[i], i ? UINT32_MAX : UINT64_MAX, &v[i])) return NULL;
    return PyFloat_FromDouble(zp_uniform(v[0], (uint32_t)v[1], (uint32_t)v[2], (uint32_t)v[3]));
}

/* sampling_probs(logits float32 (n, V), temperature, top_k, top_p) -> float64 (n, V) */
static PyObject *py_sampling_probs(PyObject *mod, PyObject *args, PyObject *kw) {
    (void)mod;
    static char *kwlist[] = {"logits", "temperature", "top_k", "top_p", NULL};
    PyObject *lg;
    zp_sampling sp = zp_sampling_default();
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|fif", kwlist, &lg, &sp.temperature, &sp.top_k,
                                     &sp.top_p))
        return parse_failed();
    zp_status st = zp_sampling_check(&sp);
    if (st) return raise_status(st);
    if (!check_array(lg, NPY_FLOAT32, -1, "logits")) return NULL;
    PyArrayObject *la = (PyArrayObject *)lg;
    if (PyArray_NDIM(la) != 2 || PyArray_DIM(la, 1) < 1) {
        PyErr_SetString(PyExc_ValueError, "logits must have shape (n, vocab)");
        return NULL;
    }
    npy_intp n = PyArray_DIM(la, 0), V = PyArray_DIM(la, 1);
    if (V > ZP_MAX_WIDTH) {
        PyErr_Format(PyExc_ValueError, "vocab %zd exceeds the limit %d", (Py_ssize_t)V,
                     ZP_MAX_WIDTH);
        return NULL;
    }
    /* NaN or +inf logits have no distribution; a row needs at least one finite logit
     * (-inf masks a token) */
    const float *lv = DATA(lg);
    for (npy_intp i = 0; i < n; i++) {
        int finite = 0;
        for (npy_intp v = 0; v < V; v++) {
            float x = lv[i * V + v];
            if (isnan(x) || x == INFINITY) {
                PyErr_Format(PyExc_ValueError, "logits row %zd holds NaN or +inf at %zd",
                             (Py_ssize_t)i, (Py_ssize_t)v);
                return NULL;
            }
            finite |= isfinite(x);
        }
        if (!finite) {
            PyErr_Format(PyExc_ValueError, "logits row %zd has no finite value", (Py_ssize_t)i);
            return NULL;
        }
    }
    PyObject *out = PyArray_SimpleNew(2, PyArray_DIMS(la), NPY_FLOAT64);
    if (!out) return NULL;
    void *work = PyMem_Malloc(zp_sampling_work_size((int)V));
    if (!work) {
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    for (npy_intp i = 0; i < n; i++)
        zp_sampling_probs(&sp, (const float *)DATA(lg) + i * V, (int)V, (double *)DATA(out) + i * V,
                          work);
    PyMem_Free(work);
    return out;
}

/* sampling_default() -> dict of zp_sampling_default()'s fields (the one source of the defaults) */
static PyObject *py_sampling_default(PyObject *mod, PyObject *noargs) {
    (void)mod;
    (void)noargs;
    zp_sampling sp = zp_sampling_default();
    return Py_BuildValue("{sdsisdsisdsK}", "cfg_scale", (double)sp.cfg_scale, "cfg_interval",
                         sp.cfg_interval, "temperature", (double)sp.temperature, "top_k", sp.top_k,
                         "top_p", (double)sp.top_p, "seed", (unsigned long long)sp.seed);
}

static PyObject *py_draw(PyObject *mod, PyObject *args) {
    (void)mod;
    PyObject *p;
    double u;
    if (!PyArg_ParseTuple(args, "Od", &p, &u)) return NULL;
    if (!check_array(p, NPY_FLOAT64, -1, "probs")) return NULL;
    npy_intp np_ = PyArray_SIZE((PyArrayObject *)p);
    if (np_ < 1 || np_ > ZP_MAX_WIDTH || !(u >= 0.0 && u < 1.0)) {
        PyErr_Format(PyExc_ValueError, "probs must hold 1 to %d values and u be in [0, 1)",
                     ZP_MAX_WIDTH);
        return NULL;
    }
    const double *pv = DATA(p);
    double total = 0.0;
    for (npy_intp v = 0; v < np_; v++) {
        if (!(pv[v] >= 0.0 && pv[v] <= 1.0 + 1e-9)) {
            char num[64];
            snprintf(num, sizeof num, "%g", pv[v]);
            PyErr_Format(PyExc_ValueError, "probs[%zd] = %s is not a probability in [0, 1]",
                         (Py_ssize_t)v, num);
            return NULL;
        }
        total += pv[v];
    }
    if (!(total > 0.0)) {
        PyErr_SetString(PyExc_ValueError, "probs sum to 0");
        return NULL;
    }
    return PyLong_FromLong(zp_draw(DATA(p), (int)PyArray_SIZE((PyArrayObject *)p), u));
}

static PyObject *py_set_num_threads(PyObject *mod, PyObject *args) {
    (void)mod;
    PyObject *o;
    unsigned long long n;
    if (!PyArg_ParseTuple(args, "O", &o)) return NULL;
    if (!get_u64(o, "number of threads (0: the default)", ZP_MAX_THREADS, &n)) return NULL;
    if (zp_set_num_threads((int)n)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "set_num_threads cannot be called inside a parallel region");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *py_get_num_threads(PyObject *mod, PyObject *noargs) {
    (void)mod;
    (void)noargs;
    return PyLong_FromLong(zp_get_num_threads());
}

static PyObject *py_set_blas_min_rows(PyObject *mod, PyObject *args) {
    (void)mod;
    int n;
    if (!PyArg_ParseTuple(args, "i", &n)) return parse_failed();
    zp_set_blas_min_rows(n);
    Py_RETURN_NONE;
}

static PyObject *py_force_isa(PyObject *mod, PyObject *args) {
    (void)mod;
    const char *isa = NULL;
    if (!PyArg_ParseTuple(args, "z", &isa)) return parse_failed();
    return PyBool_FromLong(zp_matmul_force_isa(isa) == 0);
}

static PyObject *py_build_info(PyObject *mod, PyObject *noargs) {
    (void)mod;
    (void)noargs;
    int omp_max = 1, omp_on = 0;
#ifdef _OPENMP
    omp_max = omp_get_max_threads();
    omp_on = _OPENMP;
#endif
    static const char *isas[] = {"amx", "avx512", "avx2", "scalar"};
    PyObject *have = PyList_New(0);
    for (int i = 0; have && i < 4; i++) {
        if (!zp_matmul_isa_supported(isas[i])) continue;
        PyObject *name = PyUnicode_FromString(isas[i]);
        if (!name || PyList_Append(have, name) != 0) Py_CLEAR(have);
        Py_XDECREF(name);
    }
    if (!have) return NULL;
    return Py_BuildValue("{sssNsssisisisi}", "kernel_isa", zp_matmul_isa(), "kernel_isas", have,
                         "blas", zp_blas_name(), "blas_threads", zp_blas_threads(), "openmp",
                         omp_on, "omp_max_threads", omp_max, "blas_min_rows",
                         zp_get_blas_min_rows());
}

static PyObject *py_read_bandwidth(PyObject *mod, PyObject *args) {
    (void)mod;
    Py_ssize_t bytes;
    int reps;
    if (!PyArg_ParseTuple(args, "ni", &bytes, &reps)) return NULL;
    if (bytes < 4096) {
        PyErr_SetString(PyExc_ValueError, "bytes must be >= 4096");
        return NULL;
    }
    double g;
    Py_BEGIN_ALLOW_THREADS g = zp_read_bandwidth((size_t)bytes, reps);
    Py_END_ALLOW_THREADS if (g < 0) return PyErr_NoMemory();
    return PyFloat_FromDouble(g);
}

static PyObject *py_timers_set(PyObject *mod, PyObject *args) {
    (void)mod;
    int on;
    if (!PyArg_ParseTuple(args, "p", &on)) return NULL;
    zp_timers_set(on);
    Py_RETURN_NONE;
}

/* (seconds (ZP_TIMER_THREADS, ZP_TIMERS) float64, passes) */
static PyObject *py_timers_read(PyObject *mod, PyObject *noargs) {
    (void)mod;
    (void)noargs;
    npy_intp dims[2] = {ZP_TIMER_THREADS, ZP_TIMERS};
    PyObject *a = PyArray_SimpleNew(2, dims, NPY_FLOAT64);
    if (!a) return NULL;
    long long passes = zp_timers_read((double *)PyArray_DATA((PyArrayObject *)a));
    return Py_BuildValue("(NL)", a, passes);
}

static PyMethodDef module_methods[] = {
    {"read_bandwidth", py_read_bandwidth, METH_VARARGS, "read_bandwidth(bytes, reps) -> GB/s"},
    {"timers_set", py_timers_set, METH_VARARGS, "Stage timers of zp_forward on (zeroed) or off."},
    {"timers_read", py_timers_read, METH_NOARGS, "(seconds (threads, timers), passes)."},
    {"philox4x32_10", py_philox, METH_VARARGS, "Philox4x32-10(counter4, key2) -> 4 words."},
    {"uniform", py_uniform, METH_VARARGS, "uniform(seed, sample_id, pos, draw) in [0, 1)."},
    {"sampling_probs", (PyCFunction)(void (*)(void))py_sampling_probs, METH_VARARGS | METH_KEYWORDS,
     "Sampling distribution of logits rows."},
    {"sampling_default", py_sampling_default, METH_NOARGS, "zp_sampling_default() as a dict."},
    {"draw", py_draw, METH_VARARGS, "Inverse-CDF draw."},
    {"set_num_threads", py_set_num_threads, METH_VARARGS, "Threads for OpenMP and OpenBLAS."},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "Current thread count."},
    {"set_blas_min_rows", py_set_blas_min_rows, METH_VARARGS, "Rows from which BLAS is used."},
    {"build_info", py_build_info, METH_NOARGS, "Kernel, BLAS and OpenMP facts."},
    {"force_isa", py_force_isa, METH_VARARGS, "Kernel instruction set by name, or None: auto."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT,
                                       "zipar._core",
                                       "C core of zipar (see csrc/zipar.h).",
                                       -1,
                                       module_methods,
                                       NULL,
                                       NULL,
                                       NULL,
                                       NULL};

static PyTypeObject ModelType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "zipar._core.Model",
    .tp_basicsize = sizeof(ModelObject),
    .tp_dealloc = (destructor)Model_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_init = (initproc)Model_init,
    .tp_new = PyType_GenericNew,
};
static PyTypeObject CacheType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "zipar._core.Cache",
    .tp_basicsize = sizeof(CacheObject),
    .tp_dealloc = (destructor)Cache_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_init = (initproc)Cache_init,
    .tp_new = PyType_GenericNew,
    .tp_methods = Cache_methods,
    .tp_getset = Cache_getset,
};
static PyTypeObject SessionType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "zipar._core.Session",
    .tp_basicsize = sizeof(SessionObject),
    .tp_dealloc = (destructor)Session_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_init = (initproc)Session_init,
    .tp_new = PyType_GenericNew,
    .tp_methods = Session_methods,
    .tp_getset = Session_getset,
};

PyMODINIT_FUNC PyInit__core(void) {
    import_array();
    if (PyType_Ready(&ModelType) < 0 || PyType_Ready(&CacheType) < 0 ||
        PyType_Ready(&SessionType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    Py_INCREF(&ModelType);
    Py_INCREF(&CacheType);
    Py_INCREF(&SessionType);
    /* the C constants Python uses (zipar.h): one source of truth for both sides */
#define ADD_CONST(name) PyModule_AddIntConstant(m, #name, name) < 0
    if (ADD_CONST(ZP_ROLE_PREFIX) || ADD_CONST(ZP_ROLE_SAMPLE) || ADD_CONST(ZP_ROLE_PROXY) ||
        ADD_CONST(ZP_ROLE_REFEED) || ADD_CONST(ZP_ROLE_VERIFY) || ADD_CONST(ZP_ROLE_DRAFT) ||
        ADD_CONST(ZP_ROLE_EOR) || ADD_CONST(ZP_WTYPE_F32) || ADD_CONST(ZP_WTYPE_BF16) ||
        ADD_CONST(ZP_WTYPE_F16) || ADD_CONST(ZP_POLICY_RASTER) || ADD_CONST(ZP_POLICY_ZIPAR) ||
        ADD_CONST(ZP_POLICY_ADAPTIVE) || ADD_CONST(ZP_POLICY_EXTERNAL) ||
        ADD_CONST(ZP_SCHEDULE_EAGER) || ADD_CONST(ZP_SCHEDULE_PAPER) || ADD_CONST(ZP_PROXY_ABOVE) ||
        ADD_CONST(ZP_PROXY_LEFT) || ADD_CONST(ZP_PROXY_CONST) || ADD_CONST(ZP_SLOT_UNWRITTEN) ||
        ADD_CONST(ZP_SLOT_MASKED) || ADD_CONST(ZP_SLOT_COMMITTED) || ADD_CONST(ZP_QUERY_FIELDS) ||
        ADD_CONST(ZP_CELL_FIELDS) || ADD_CONST(ZP_TRACE_FIELDS) || ADD_CONST(ZP_MAX_THREADS) ||
        ADD_CONST(ZP_MAX_SEQ_LEN) || ADD_CONST(ZP_MAX_WIDTH) || ADD_CONST(ZP_MAX_LAYERS) ||
        ADD_CONST(ZP_MAX_IMAGES) || ADD_CONST(ZP_STAGES) || ADD_CONST(ZP_TIMERS) ||
        ADD_CONST(ZP_TIMER_THREADS) || ADD_CONST(ZP_TIMER_SETUP) || ADD_CONST(ZP_TIMER_ENTER) ||
        ADD_CONST(ZP_TIMER_JOIN) || ADD_CONST(ZP_TIMER_COMBINE)) {
        Py_DECREF(m);
        return NULL;
    }
#undef ADD_CONST
    if (PyModule_AddObject(m, "Model", (PyObject *)&ModelType) < 0 ||
        PyModule_AddObject(m, "Cache", (PyObject *)&CacheType) < 0 ||
        PyModule_AddObject(m, "Session", (PyObject *)&SessionType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
