/*
 * Raw store framing in C: the hot loop of ingestion.rawstore.append_many.
 *
 * For each payload it computes SHA-256(payload), the chain link
 *
 *     chain_n = SHA-256(chain_{n-1} || u64be(seq_n) || u64be(recv_ns_n) || SHA-256(payload_n))
 *
 * and writes the frame header (">HIQQ32s32s": magic 0xF5A1, payload length,
 * seq, recv_ns, payload hash, chain) and the payload into one output buffer.
 * It is a drop-in for rawstore._frame_const and rawstore._frame_var, which
 * stay as the reference implementation and the fallback; the tests check that
 * both produce the same bytes and raise the same exception types.
 *
 * Why C: with two hashlib calls per record, Python's per-call overhead alone
 * caps the pure-Python loop near 500k records/s. Here each record costs two
 * SHA-256 compressions of ~2 blocks plus a copy.
 *
 * Hashing uses OpenSSL's SHA256_Init/Update/Final. They are deprecated in
 * OpenSSL 3 in favour of EVP, but they call the same assembly (SHA-NI/AVX2)
 * without the provider dispatch, and measured 6.5M hashes/s of 120 bytes here
 * against 5.2M/s for EVP with a reused context and 2.1M/s for the one-shot
 * SHA256(), which OpenSSL 3 routes through EVP_Q_digest (a fetch per call).
 * A libcrypto built without the deprecated API gets the EVP path instead.
 *
 * Steps of each call:
 * 1. With the GIL, walk the batch in order, taking a buffer of each payload
 *    and converting each receive time exactly as struct.pack(">Q") would, so
 *    the first bad input raises what the Python framer raises for it
 *    (TypeError for a payload that is not bytes-like, struct.error for a
 *    receive time or seq that is not a u64); frame_var stops at the first
 *    receive time on or after day_end, as the Python one does.
 * 2. Allocate the output bytes object at its exact final size.
 * 3. Without the GIL (for batches big enough to be worth it), hash, chain
 *    and copy. The payload buffers are held (and so kept alive and, for a
 *    bytearray, unresizable) until the loop is done.
 */
#define PY_SSIZE_T_CLEAN
/* Before any OpenSSL header: keep SHA256_Init and friends declared without warnings. */
#define OPENSSL_SUPPRESS_DEPRECATED 1
#include <Python.h>
#include <string.h>

#include <openssl/opensslv.h>
#include <openssl/opensslconf.h>

#if defined(OPENSSL_NO_DEPRECATED_3_0)
#define RAWFRAME_EVP 1
#include <openssl/evp.h>
#else
#include <openssl/sha.h>
#endif

#define ABI_VERSION 2 /* rawstore._RAWFRAME_ABI: bump when the functions rawstore calls change */
#define FRAME_MAGIC 0xF5A1u
#define DIGEST 32
#define FRAME_HEADER 86 /* 2 + 4 + 8 + 8 + 32 + 32 */
#define LINK_SIZE 80    /* 32 + 8 + 8 + 32 */
#define NOGIL_MIN_RECORDS 64

static PyObject *struct_error; /* struct.error, so rawstore's existing except clause applies */

/* ------------------------------------------------------------------ SHA-256 */

typedef struct {
#ifdef RAWFRAME_EVP
    EVP_MD_CTX *ctx;
#else
    int unused;
#endif
} hasher;

#ifdef RAWFRAME_EVP
static EVP_MD *sha256_md; /* fetched once at import */
#endif

static int hasher_open(hasher *h) {
#ifdef RAWFRAME_EVP
    h->ctx = EVP_MD_CTX_new();
    if (h->ctx == NULL) {
        PyErr_NoMemory();
        return -1;
    }
#else
    (void)h;
#endif
    return 0;
}

static void hasher_close(hasher *h) {
#ifdef RAWFRAME_EVP
    EVP_MD_CTX_free(h->ctx);
#else
    (void)h;
#endif
}

/* Returns 0 on success; only the EVP path can fail. Called without the GIL. */
static int sha256(hasher *h, const unsigned char *data, size_t len, unsigned char *out) {
#ifdef RAWFRAME_EVP
    unsigned int n = 0;
    if (EVP_DigestInit_ex2(h->ctx, sha256_md, NULL) != 1 || EVP_DigestUpdate(h->ctx, data, len) != 1 ||
        EVP_DigestFinal_ex(h->ctx, out, &n) != 1)
        return -1;
    return 0;
#else
    SHA256_CTX c;
    (void)h;
    SHA256_Init(&c);
    SHA256_Update(&c, data, len);
    SHA256_Final(out, &c);
    return 0;
#endif
}

/* ------------------------------------------------------------------ helpers */

static inline void put_u16(unsigned char *p, unsigned int v) {
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static inline void put_u32(unsigned char *p, unsigned long v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static inline void put_u64(unsigned char *p, unsigned long long v) {
    for (int i = 7; i >= 0; i--) {
        p[i] = (unsigned char)v;
        v >>= 8;
    }
}

/* Convert like struct.pack(">Q", obj): an int or an object with __index__,
   0 <= value < 2**64; anything else raises struct.error. */
static int as_u64(PyObject *obj, unsigned long long *out) {
    PyObject *num;
    if (PyLong_Check(obj)) {
        Py_INCREF(obj);
        num = obj;
    } else {
        num = PyNumber_Index(obj);
        if (num == NULL) {
            if (PyErr_ExceptionMatches(PyExc_TypeError)) {
                PyErr_Clear();
                PyErr_SetString(struct_error, "required argument is not an integer");
            }
            return -1;
        }
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(num);
    Py_DECREF(num);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_SetString(struct_error, "argument out of range");
        }
        return -1;
    }
    *out = v;
    return 0;
}

static int get_chain(PyObject *chain, unsigned char out[DIGEST]) {
    if (!PyBytes_Check(chain)) {
        PyErr_Format(PyExc_TypeError, "chain must be bytes, not %.100s", Py_TYPE(chain)->tp_name);
        return -1;
    }
    if (PyBytes_GET_SIZE(chain) != DIGEST) {
        PyErr_Format(PyExc_ValueError, "chain must be 32 bytes, got %zd", PyBytes_GET_SIZE(chain));
        return -1;
    }
    memcpy(out, PyBytes_AS_STRING(chain), DIGEST);
    return 0;
}

/* One record collected in step 1. */
typedef struct {
    Py_buffer view;
    unsigned long long seq;
    unsigned long long ts;
} item;

typedef struct {
    item *items;
    Py_ssize_t count; /* items whose view is held */
} batch;

static void batch_release(batch *b) {
    for (Py_ssize_t i = 0; i < b->count; i++)
        PyBuffer_Release(&b->items[i].view);
    PyMem_Free(b->items);
    b->items = NULL;
    b->count = 0;
}

/* Step 1 for one payload: take its buffer, check seq and length. The order of
   checks follows the Python framer: len(p) and sha256(p) (TypeError), then the
   link pack (recv_ns, seq: struct.error), then the frame pack (length). */
static int take_payload(batch *b, PyObject *p, unsigned long long *seq) {
    item *it = &b->items[b->count];
    if (PyUnicode_Check(p)) {
        /* hashlib's own message for the commonest mistake. */
        PyErr_SetString(PyExc_TypeError, "Strings must be encoded before hashing");
        return -1;
    }
    if (PyObject_GetBuffer(p, &it->view, PyBUF_SIMPLE) < 0) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "object supporting the buffer API required, not %.100s", Py_TYPE(p)->tp_name);
        }
        return -1;
    }
    b->count++;
    if (*seq == 0xFFFFFFFFFFFFFFFFull) {
        PyErr_SetString(struct_error, "argument out of range");
        return -1;
    }
    *seq += 1;
    it->seq = *seq;
    return 0;
}

static int check_length(item *it, Py_ssize_t *total) {
    if ((unsigned long long)it->view.len > 0xFFFFFFFFull) {
        PyErr_SetString(struct_error, "argument out of range");
        return -1;
    }
    if (*total > PY_SSIZE_T_MAX - FRAME_HEADER - it->view.len) {
        PyErr_NoMemory();
        return -1;
    }
    *total += FRAME_HEADER + it->view.len;
    return 0;
}

/* Steps 2 and 3: hash, chain and write every collected record into a new bytes
   object; chain is updated in place. */
static PyObject *frame_items(batch *b, unsigned char chain[DIGEST], Py_ssize_t total) {
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL)
        return NULL;
    hasher h;
    if (hasher_open(&h) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    unsigned char *dst = (unsigned char *)PyBytes_AS_STRING(out);
    unsigned char link[LINK_SIZE];
    int failed = 0;
    PyThreadState *save = NULL;
    if (b->count >= NOGIL_MIN_RECORDS)
        save = PyEval_SaveThread();
    for (Py_ssize_t i = 0; i < b->count; i++) {
        item *it = &b->items[i];
        unsigned char *digest = dst + 22;
        unsigned char *new_chain = dst + 54;
        /* The payload hash goes straight into its header slot. */
        if (sha256(&h, it->view.buf, (size_t)it->view.len, digest) < 0) {
            failed = 1;
            break;
        }
        memcpy(link, chain, DIGEST);
        put_u64(link + 32, it->seq);
        put_u64(link + 40, it->ts);
        memcpy(link + 48, digest, DIGEST);
        if (sha256(&h, link, LINK_SIZE, new_chain) < 0) {
            failed = 1;
            break;
        }
        memcpy(chain, new_chain, DIGEST);
        put_u16(dst, FRAME_MAGIC);
        put_u32(dst + 2, (unsigned long)it->view.len);
        put_u64(dst + 6, it->seq);
        put_u64(dst + 14, it->ts);
        memcpy(dst + FRAME_HEADER, it->view.buf, (size_t)it->view.len);
        dst += FRAME_HEADER + it->view.len;
    }
    if (save != NULL)
        PyEval_RestoreThread(save);
    hasher_close(&h);
    if (failed) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL SHA-256 failed");
        return NULL;
    }
    return out;
}

/* ------------------------------------------------------------------ frame_const */

PyDoc_STRVAR(frame_const_doc,
             "frame_const(payloads, ts, seq, chain) -> (bytes, seq, chain)\n\n"
             "Frame a batch sharing one receive time; same result as rawstore._frame_const.");

static PyObject *frame_const(PyObject *self, PyObject *args) {
    PyObject *payloads, *ts_obj, *seq_obj, *chain_obj;
    if (!PyArg_ParseTuple(args, "OOOO:frame_const", &payloads, &ts_obj, &seq_obj, &chain_obj))
        return NULL;
    unsigned char chain[DIGEST];
    unsigned long long seq, ts = 0;
    if (as_u64(seq_obj, &seq) < 0 || get_chain(chain_obj, chain) < 0)
        return NULL;
    PyObject *seq_fast = PySequence_Fast(payloads, "payloads must be a sequence");
    if (seq_fast == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq_fast);
    PyObject **objs = PySequence_Fast_ITEMS(seq_fast);
    batch b = {PyMem_New(item, n > 0 ? n : 1), 0};
    if (b.items == NULL) {
        Py_DECREF(seq_fast);
        return PyErr_NoMemory();
    }
    Py_ssize_t total = 0;
    PyObject *out = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (take_payload(&b, objs[i], &seq) < 0)
            goto done;
        /* Python packs recv_ns for every record; it can only fail on the first. */
        if (i == 0 && as_u64(ts_obj, &ts) < 0)
            goto done;
        b.items[i].ts = ts;
        if (check_length(&b.items[i], &total) < 0)
            goto done;
    }
    PyObject *buf = frame_items(&b, chain, total);
    if (buf != NULL)
        out = Py_BuildValue("(NKy#)", buf, seq, (const char *)chain, (Py_ssize_t)DIGEST);
done:
    batch_release(&b);
    Py_DECREF(seq_fast);
    return out;
}

/* ------------------------------------------------------------------ frame_var */

PyDoc_STRVAR(frame_var_doc,
             "frame_var(payloads, stamps, start, day_end, seq, chain) -> (bytes, stop, seq, chain)\n\n"
             "Frame from start until the first record received on or after day_end;\n"
             "same result as rawstore._frame_var.");

static PyObject *frame_var(PyObject *self, PyObject *args) {
    PyObject *payloads, *stamps, *day_end_obj, *seq_obj, *chain_obj;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "OOnOOO:frame_var", &payloads, &stamps, &start, &day_end_obj, &seq_obj, &chain_obj))
        return NULL;
    unsigned char chain[DIGEST];
    unsigned long long seq;
    if (as_u64(seq_obj, &seq) < 0 || get_chain(chain_obj, chain) < 0)
        return NULL;
    /* A day_end that is a u64 lets exact ints compare natively; otherwise every
       stamp is compared the Python way. */
    unsigned long long day_end = 0;
    int native_end = 0;
    if (PyLong_CheckExact(day_end_obj)) {
        day_end = PyLong_AsUnsignedLongLong(day_end_obj);
        if (day_end == (unsigned long long)-1 && PyErr_Occurred())
            PyErr_Clear();
        else
            native_end = 1;
    }
    PyObject *pay_fast = PySequence_Fast(payloads, "payloads must be a sequence");
    if (pay_fast == NULL)
        return NULL;
    PyObject *ts_fast = PySequence_Fast(stamps, "recv_ns must be a sequence");
    if (ts_fast == NULL) {
        Py_DECREF(pay_fast);
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(pay_fast);
    PyObject **objs = PySequence_Fast_ITEMS(pay_fast);
    Py_ssize_t n_ts = PySequence_Fast_GET_SIZE(ts_fast);
    PyObject **ts_objs = PySequence_Fast_ITEMS(ts_fast);
    if (start < 0) {
        PyErr_SetString(PyExc_ValueError, "start must be >= 0");
        Py_DECREF(ts_fast);
        Py_DECREF(pay_fast);
        return NULL;
    }
    Py_ssize_t room = n > start ? n - start : 1;
    batch b = {PyMem_New(item, room), 0};
    PyObject *out = NULL;
    if (b.items == NULL) {
        PyErr_NoMemory();
        goto cleanup;
    }
    Py_ssize_t total = 0;
    Py_ssize_t i = start;
    for (; i < n; i++) {
        if (i >= n_ts) {
            PyErr_SetString(PyExc_IndexError, "list index out of range");
            goto done;
        }
        PyObject *t = ts_objs[i];
        unsigned long long ts;
        int have_ts = 0;
        if (native_end && PyLong_CheckExact(t)) {
            ts = PyLong_AsUnsignedLongLong(t);
            if (ts == (unsigned long long)-1 && PyErr_Occurred())
                PyErr_Clear(); /* negative or huge: compare the Python way below */
            else
                have_ts = 1;
        }
        if (have_ts) {
            if (ts >= day_end)
                break;
        } else {
            int later = PyObject_RichCompareBool(t, day_end_obj, Py_GE);
            if (later < 0)
                goto done;
            if (later)
                break;
        }
        if (take_payload(&b, objs[i], &seq) < 0)
            goto done;
        if (!have_ts && as_u64(t, &ts) < 0)
            goto done;
        b.items[b.count - 1].ts = ts;
        if (check_length(&b.items[b.count - 1], &total) < 0)
            goto done;
    }
    {
        PyObject *buf = frame_items(&b, chain, total);
        if (buf != NULL)
            out = Py_BuildValue("(NnKy#)", buf, i, seq, (const char *)chain, (Py_ssize_t)DIGEST);
    }
done:
    batch_release(&b);
cleanup:
    Py_DECREF(ts_fast);
    Py_DECREF(pay_fast);
    return out;
}

/* ------------------------------------------------------------------ bare hashing, for the benchmark */

PyDoc_STRVAR(hash_chain_only_doc,
             "hash_chain_only(payloads, ts) -> chain\n\n"
             "Only the two SHA-256 per record (payload, chain link) with no framing or\n"
             "copy: the benchmark's C-side floor.");

static PyObject *hash_chain_only(PyObject *self, PyObject *args) {
    PyObject *payloads;
    unsigned long long ts;
    if (!PyArg_ParseTuple(args, "OK:hash_chain_only", &payloads, &ts))
        return NULL;
    PyObject *fast = PySequence_Fast(payloads, "payloads must be a sequence");
    if (fast == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    PyObject **objs = PySequence_Fast_ITEMS(fast);
    hasher h;
    if (hasher_open(&h) < 0) {
        Py_DECREF(fast);
        return NULL;
    }
    unsigned char link[LINK_SIZE];
    memset(link, 0, sizeof link);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyBytes_Check(objs[i])) {
            PyErr_SetString(PyExc_TypeError, "payloads must be bytes");
            break;
        }
        put_u64(link + 32, (unsigned long long)i + 1);
        put_u64(link + 40, ts);
        sha256(&h, (const unsigned char *)PyBytes_AS_STRING(objs[i]), (size_t)PyBytes_GET_SIZE(objs[i]), link + 48);
        sha256(&h, link, LINK_SIZE, link);
    }
    hasher_close(&h);
    Py_DECREF(fast);
    if (PyErr_Occurred())
        return NULL;
    return PyBytes_FromStringAndSize((const char *)link, DIGEST);
}

/* ------------------------------------------------------------------ references */

PyDoc_STRVAR(make_refs_doc,
             "make_refs(cls, stream_slot, seq_slot, stream, first, last) -> list\n\n"
             "[cls(stream, s) for s in first..last], built as rawstore._refs does:\n"
             "cls.__new__ without __init__, then each slot set through its descriptor.");

static PyObject *make_refs(PyObject *self, PyObject *args) {
    PyTypeObject *cls;
    PyObject *stream_slot, *seq_slot, *stream;
    long long first, last;
    if (!PyArg_ParseTuple(args, "O!OOOLL:make_refs", &PyType_Type, &cls, &stream_slot, &seq_slot, &stream, &first, &last))
        return NULL;
    descrsetfunc set_stream = Py_TYPE(stream_slot)->tp_descr_set;
    descrsetfunc set_seq = Py_TYPE(seq_slot)->tp_descr_set;
    if (set_stream == NULL || set_seq == NULL) {
        PyErr_SetString(PyExc_TypeError, "stream_slot and seq_slot must be data descriptors");
        return NULL;
    }
    Py_ssize_t n = last >= first ? (Py_ssize_t)(last - first + 1) : 0;
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *ref = cls->tp_alloc(cls, 0);
        if (ref == NULL)
            goto fail;
        PyList_SET_ITEM(out, i, ref);
        PyObject *seq = PyLong_FromLongLong(first + i);
        if (seq == NULL)
            goto fail;
        int bad = set_stream(stream_slot, ref, stream) < 0 || set_seq(seq_slot, ref, seq) < 0;
        Py_DECREF(seq);
        if (bad)
            goto fail;
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

/* ------------------------------------------------------------------ module */

static PyMethodDef methods[] = {
    {"frame_const", frame_const, METH_VARARGS, frame_const_doc},
    {"frame_var", frame_var, METH_VARARGS, frame_var_doc},
    {"hash_chain_only", hash_chain_only, METH_VARARGS, hash_chain_only_doc},
    {"make_refs", make_refs, METH_VARARGS, make_refs_doc},
    {NULL, NULL, 0, NULL},
};

static int module_exec(PyObject *m) {
    PyObject *struct_mod = PyImport_ImportModule("struct");
    if (struct_mod == NULL)
        return -1;
    struct_error = PyObject_GetAttrString(struct_mod, "error");
    Py_DECREF(struct_mod);
    if (struct_error == NULL)
        return -1;
#ifdef RAWFRAME_EVP
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (sha256_md == NULL) {
        PyErr_SetString(PyExc_ImportError, "OpenSSL has no SHA256 digest");
        return -1;
    }
    const char *impl = "openssl-evp";
#else
    const char *impl = "openssl-sha256-lowlevel";
#endif
    if (PyModule_AddIntConstant(m, "ABI_VERSION", ABI_VERSION) < 0 ||
        PyModule_AddStringConstant(m, "SHA256_IMPL", impl) < 0 ||
        PyModule_AddStringConstant(m, "OPENSSL_VERSION", OPENSSL_VERSION_TEXT) < 0)
        return -1;
    return 0;
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "ingestion._rawframe", "Raw store framing in C (see ingestion/rawstore.py).", 0, methods, slots,
};

PyMODINIT_FUNC PyInit__rawframe(void) { return PyModuleDef_Init(&moduledef); }
