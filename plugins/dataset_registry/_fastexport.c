/* dataset_registry._fastexport: the no-preprocess export engine in C (optional; see mysql_export).
 *
 * Python prepares the connection (TLS check, multi-statements off, READ ONLY session, consistent
 * snapshot, sql_guard) and runs the query with MySQLdb's own ``conn.query()``; this module then takes
 * the connection's MYSQL* (mysqlclient's ``_get_native_connection()`` capsule), starts an unbuffered
 * result (``mysql_use_result``) and streams it:
 *   - CSV exactly as csv_format writes it: NULL -> empty unquoted; binary values (the ones MySQLdb
 *     returns as bytes) -> "0x" + uppercase hex; other values quoted (RFC 4180) when empty or
 *     containing '"' ',' CR or LF, unless the column is "plain" (numbers, dates);
 *   - the column profile (column_profile.StreamProfiler semantics): nulls, empty, min/max (decimal
 *     text compared exactly, FLOAT/DOUBLE with strtod, everything else by bytes; ties keep the first
 *     seen), distinct (exact count of 64-bit hashes up to K, then the K smallest: a KMV sketch);
 *   - the unique-key facts (column_profile.KeyTracker semantics, including its per-batch NULL rule).
 * Rows are fetched and formatted with the GIL released; every ~buf_size bytes (or batch_rows rows)
 * the buffer is handed to a Python callable ``write(bytes, rows_so_far)``.
 * Server errors are raised as _fastexport.Error(code, message), like MySQLdb's.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <mysql.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SKETCH_K 4096
#define TABLE_SIZE 8192 /* open addressing, power of two, load <= 0.5 */

static PyObject *FastError;

/* ------------------------------------------------------------------ growable buffer */
typedef struct {
    char *p;
    size_t len, cap;
} buf_t;

static int buf_reserve(buf_t *b, size_t extra) {
    if (extra > SIZE_MAX / 2 - b->len) return -1;
    size_t need = b->len + extra;
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int buf_set(buf_t *b, const char *v, size_t n) {
    b->len = 0;
    if (buf_reserve(b, n + 1)) return -1;
    if (n) memcpy(b->p, v, n);
    b->len = n;
    b->p[n] = 0;
    return 0;
}

static void buf_free(buf_t *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ------------------------------------------------------------------ hashing (64-bit, wyhash-like) */
static inline uint64_t rd64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline uint64_t mum(uint64_t a, uint64_t b) {
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
}

static inline uint64_t rd32(const unsigned char *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* wyhash-style: fixed-size (overlapping) reads only, every byte and the length mixed in. */
static uint64_t hash_bytes(const unsigned char *p, size_t len) {
    const uint64_t s0 = 0xa0761d6478bd642fULL, s1 = 0xe7037ed1a0b428dbULL, s2 = 0x8ebc6af09c88c6e3ULL;
    uint64_t seed = s2, a, b;
    if (len <= 16) {
        if (len >= 4) {
            size_t step = (len >> 3) << 2;
            a = (rd32(p) << 32) | rd32(p + step);
            b = (rd32(p + len - 4) << 32) | rd32(p + len - 4 - step);
        } else if (len > 0) {
            a = ((uint64_t)p[0] << 16) | ((uint64_t)p[len >> 1] << 8) | p[len - 1];
            b = 0;
        } else {
            a = b = 0;
        }
    } else {
        size_t i = len;
        while (i > 16) {
            seed = mum(rd64(p) ^ s1, rd64(p + 8) ^ seed);
            p += 16;
            i -= 16;
        }
        a = rd64(p + i - 16); /* the last 16 bytes (overlapping the consumed ones: len > 16) */
        b = rd64(p + i - 8);
    }
    __uint128_t r = (__uint128_t)(a ^ s1) * (b ^ seed);
    return mum((uint64_t)r ^ s0 ^ (uint64_t)len, (uint64_t)(r >> 64) ^ s1);
}

/* ------------------------------------------------------------------ distinct: exact, then KMV */
typedef struct {
    int saturated;
    uint64_t *table; /* exact phase: 0 marks an empty slot (the hash 0 is has_zero) */
    int has_zero;
    size_t count;
    int64_t *kept; /* saturated: the SKETCH_K smallest distinct hashes, ascending (signed) */
} sketch_t;

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int sketch_add(sketch_t *s, uint64_t h) {
    if (!s->saturated) {
        if (h == 0) {
            if (!s->has_zero) { s->has_zero = 1; s->count++; }
        } else {
            if (!s->table) {
                s->table = calloc(TABLE_SIZE, sizeof(uint64_t));
                if (!s->table) return -1;
            }
            size_t i = (size_t)(h >> 40) & (TABLE_SIZE - 1);
            while (s->table[i]) {
                if (s->table[i] == h) return 0;
                i = (i + 1) & (TABLE_SIZE - 1);
            }
            s->table[i] = h;
            s->count++;
        }
        if (s->count > SKETCH_K) { /* saturate: keep the K smallest (as signed int64, like numpy) */
            int64_t *all = malloc(sizeof(int64_t) * s->count);
            if (!all) return -1;
            size_t n = 0;
            if (s->has_zero) all[n++] = 0;
            for (size_t i = 0; i < TABLE_SIZE; i++)
                if (s->table[i]) all[n++] = (int64_t)s->table[i];
            qsort(all, n, sizeof(int64_t), cmp_i64);
            free(s->table);
            s->table = NULL;
            s->kept = all;
            s->count = SKETCH_K;
            s->saturated = 1;
        }
        return 0;
    }
    int64_t v = (int64_t)h;
    if (v >= s->kept[SKETCH_K - 1]) return 0;
    size_t lo = 0, hi = SKETCH_K - 1; /* first index with kept[i] >= v; i < K-1 */
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (s->kept[mid] < v) lo = mid + 1; else hi = mid;
    }
    if (s->kept[lo] == v) return 0;
    memmove(s->kept + lo + 1, s->kept + lo, sizeof(int64_t) * (SKETCH_K - 1 - lo));
    s->kept[lo] = v;
    return 0;
}

static PyObject *sketch_kept(sketch_t *s) { /* sorted list of signed hashes */
    size_t n = 0;
    int64_t *tmp = NULL;
    if (s->saturated) {
        n = SKETCH_K;
    } else {
        tmp = malloc(sizeof(int64_t) * (s->count + 1));
        if (!tmp) return PyErr_NoMemory();
        if (s->has_zero) tmp[n++] = 0;
        if (s->table)
            for (size_t i = 0; i < TABLE_SIZE; i++)
                if (s->table[i]) tmp[n++] = (int64_t)s->table[i];
        qsort(tmp, n, sizeof(int64_t), cmp_i64);
    }
    const int64_t *src = s->saturated ? s->kept : tmp;
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (list) {
        for (size_t i = 0; i < n; i++) {
            PyObject *v = PyLong_FromLongLong(src[i]);
            if (!v) { Py_CLEAR(list); break; }
            PyList_SET_ITEM(list, (Py_ssize_t)i, v);
        }
    }
    free(tmp);
    return list;
}

static void sketch_free(sketch_t *s) {
    free(s->table);
    free(s->kept);
    s->table = NULL;
    s->kept = NULL;
}

/* ------------------------------------------------------------------ typed comparison */
enum { KIND_BYTES = 0, KIND_DECIMAL = 1, KIND_FLOAT = 2 };

typedef struct {
    int neg;
    const char *ip, *fp;
    size_t il, fl;
} dec_t;

static int dec_parse(const char *s, size_t n, dec_t *d) {
    size_t i = 0, st;
    d->neg = 0;
    if (i < n && (s[i] == '-' || s[i] == '+')) { d->neg = s[i] == '-'; i++; }
    st = i;
    while (i < n && s[i] >= '0' && s[i] <= '9') i++;
    d->ip = s + st;
    d->il = i - st;
    d->fp = s + i;
    d->fl = 0;
    if (i < n && s[i] == '.') {
        i++;
        st = i;
        while (i < n && s[i] >= '0' && s[i] <= '9') i++;
        d->fp = s + st;
        d->fl = i - st;
    }
    if (i != n || (d->il == 0 && d->fl == 0)) return -1;
    while (d->il && d->ip[0] == '0') { d->ip++; d->il--; }
    while (d->fl && d->fp[d->fl - 1] == '0') d->fl--;
    if (!d->il && !d->fl) d->neg = 0; /* -0.00 == 0.00 */
    return 0;
}

static int dec_cmp(const dec_t *a, const dec_t *b) {
    if (a->neg != b->neg) return a->neg ? -1 : 1;
    int c;
    if (a->il != b->il) c = a->il < b->il ? -1 : 1;
    else {
        c = a->il ? memcmp(a->ip, b->ip, a->il) : 0;
        if (!c) {
            size_t m = a->fl < b->fl ? a->fl : b->fl;
            c = m ? memcmp(a->fp, b->fp, m) : 0;
            if (!c && a->fl != b->fl) c = a->fl < b->fl ? -1 : 1;
        }
        c = (c > 0) - (c < 0);
    }
    return a->neg ? -c : c;
}

static int float_parse(const char *s, size_t n, double *out) {
    char tmp[64];
    if (n == 0 || n >= sizeof tmp) return -1;
    memcpy(tmp, s, n);
    tmp[n] = 0;
    char *end;
    *out = strtod(tmp, &end);
    return end == tmp + n ? 0 : -1;
}

static int bytes_cmp(const char *a, size_t al, const char *b, size_t bl) {
    size_t m = al < bl ? al : bl;
    int c = m ? memcmp(a, b, m) : 0;
    if (c) return c < 0 ? -1 : 1;
    return (al > bl) - (al < bl);
}

/* Compare two values of a kind; a value that does not parse falls back to byte order. */
static int value_cmp(int kind, const char *a, size_t al, const char *b, size_t bl) {
    if (kind == KIND_DECIMAL) {
        dec_t x, y;
        if (!dec_parse(a, al, &x) && !dec_parse(b, bl, &y)) return dec_cmp(&x, &y);
    } else if (kind == KIND_FLOAT) {
        double x, y;
        if (!float_parse(a, al, &x) && !float_parse(b, bl, &y)) return (x > y) - (x < y);
    }
    return bytes_cmp(a, al, b, bl);
}

/* ------------------------------------------------------------------ per-column profile */
typedef struct {
    int plain, is_bytes, kind, count_empty;
    long long nulls, empty;
    int has;
    buf_t minv, maxv;
    double minf, maxf;
    dec_t mind, maxd; /* KIND_DECIMAL: minv/maxv parsed (pointing into them) */
    sketch_t sk;
} col_t;

/* min/max of one non-NULL value; ties keep the first seen. A value of a numeric column that does
 * not parse as a number switches the column to byte order (its min/max text is kept). */
static int col_minmax(col_t *c, const char *v, size_t n) {
    if (!c->has) {
        if (c->kind == KIND_FLOAT && float_parse(v, n, &c->minf)) c->kind = KIND_BYTES;
        c->maxf = c->minf;
        if (buf_set(&c->minv, v, n) || buf_set(&c->maxv, v, n)) return -1;
        if (c->kind == KIND_DECIMAL &&
            (dec_parse(c->minv.p, c->minv.len, &c->mind) || dec_parse(c->maxv.p, c->maxv.len, &c->maxd)))
            c->kind = KIND_BYTES;
        c->has = 1;
        return 0;
    }
    if (c->kind == KIND_FLOAT) {
        double f;
        if (!float_parse(v, n, &f)) {
            if (f < c->minf) { c->minf = f; if (buf_set(&c->minv, v, n)) return -1; }
            if (f > c->maxf) { c->maxf = f; if (buf_set(&c->maxv, v, n)) return -1; }
            return 0;
        }
        c->kind = KIND_BYTES;
    } else if (c->kind == KIND_DECIMAL) {
        dec_t d;
        if (!dec_parse(v, n, &d)) {
            if (dec_cmp(&d, &c->mind) < 0) {
                if (buf_set(&c->minv, v, n)) return -1;
                dec_parse(c->minv.p, c->minv.len, &c->mind); /* parsed above: cannot fail */
            } else if (dec_cmp(&d, &c->maxd) > 0) {
                if (buf_set(&c->maxv, v, n)) return -1;
                dec_parse(c->maxv.p, c->maxv.len, &c->maxd);
            }
            return 0;
        }
        c->kind = KIND_BYTES;
    }
    if (bytes_cmp(v, n, c->minv.p, c->minv.len) < 0) return buf_set(&c->minv, v, n);
    if (bytes_cmp(v, n, c->maxv.p, c->maxv.len) > 0) return buf_set(&c->maxv, v, n);
    return 0;
}

static int col_add(col_t *c, const char *v, size_t n) {
    if (c->count_empty && n == 0) c->empty++;
    if (col_minmax(c, v, n)) return -1;
    return sketch_add(&c->sk, hash_bytes((const unsigned char *)v, n));
}

/* ------------------------------------------------------------------ unique key on a sorted stream */
typedef struct {
    int n;
    int *pos, *kind;
    dec_t *prevd; /* KIND_DECIMAL key columns: prev parsed (prevd_ok[i] when it parsed) */
    int *prevd_ok;
    buf_t *prev, *bex_head, *bex_tail, *ex_head, *ex_tail;
    int prev_valid, has_example, b_has_example;
    long long batch_rows, batch_n;
    long long nulls, dups, unsorted, b_nulls, b_dups, b_unsorted;
} key_t_;

static void key_end_batch(key_t_ *k) {
    if (k->batch_n == 0) return;
    if (k->b_nulls) {
        k->nulls += k->b_nulls;
        k->prev_valid = 0; /* ordering around NULL keys is not judged (the batch is skipped) */
    } else {
        k->dups += k->b_dups;
        k->unsorted += k->b_unsorted;
        if (k->b_has_example && !k->has_example) {
            buf_t *t; /* swap the batch's example in (both are arrays of n buffers) */
            t = k->ex_head; k->ex_head = k->bex_head; k->bex_head = t;
            t = k->ex_tail; k->ex_tail = k->bex_tail; k->bex_tail = t;
            k->has_example = 1;
        }
    }
    k->b_nulls = k->b_dups = k->b_unsorted = 0;
    k->b_has_example = 0;
    k->batch_n = 0;
}

static int key_add(key_t_ *k, MYSQL_ROW row, unsigned long *lengths) {
    int nulls = 0;
    for (int i = 0; i < k->n; i++)
        if (!row[k->pos[i]]) nulls++;
    k->b_nulls += nulls;
    if (!k->b_nulls) {
        if (k->prev_valid) {
            int c = 0;
            for (int i = 0; i < k->n && !c; i++) {
                int p = k->pos[i];
                dec_t d;
                if (k->kind[i] == KIND_DECIMAL && k->prevd_ok[i] && !dec_parse(row[p], lengths[p], &d))
                    c = dec_cmp(&k->prevd[i], &d);
                else
                    c = value_cmp(k->kind[i], k->prev[i].p, k->prev[i].len, row[p], lengths[p]);
            }
            if (c == 0) k->b_dups++;
            else if (c > 0) {
                k->b_unsorted++;
                if (!k->has_example && !k->b_has_example) {
                    for (int i = 0; i < k->n; i++) {
                        int p = k->pos[i];
                        if (buf_set(&k->bex_head[i], k->prev[i].p, k->prev[i].len) ||
                            buf_set(&k->bex_tail[i], row[p], lengths[p])) return -1;
                    }
                    k->b_has_example = 1;
                }
            }
        }
        for (int i = 0; i < k->n; i++) {
            int p = k->pos[i];
            if (buf_set(&k->prev[i], row[p], lengths[p])) return -1;
            if (k->kind[i] == KIND_DECIMAL) k->prevd_ok[i] = !dec_parse(k->prev[i].p, k->prev[i].len, &k->prevd[i]);
        }
        k->prev_valid = 1;
    }
    if (++k->batch_n >= k->batch_rows) key_end_batch(k);
    return 0;
}

static void key_free(key_t_ *k) {
    if (k->prev)
        for (int i = 0; i < k->n; i++) {
            buf_free(&k->prev[i]); buf_free(&k->bex_head[i]); buf_free(&k->bex_tail[i]);
            buf_free(&k->ex_head[i]); buf_free(&k->ex_tail[i]);
        }
    free(k->pos); free(k->kind); free(k->prevd); free(k->prevd_ok); free(k->prev); free(k->bex_head); free(k->bex_tail); free(k->ex_head); free(k->ex_tail);
    memset(k, 0, sizeof *k);
}

/* ------------------------------------------------------------------ CSV formatting */
static const char HEX[] = "0123456789ABCDEF";
static unsigned char NEEDS_QUOTE[256];

/* Length of the valid UTF-8 prefix of v, with Python's strict rules (no overlongs, no surrogates,
 * nothing above U+10FFFF): text columns must decode as the Python engine decodes them. */
static size_t utf8_valid_prefix(const char *v, size_t n) {
    const unsigned char *s = (const unsigned char *)v;
    size_t i = 0;
    while (i < n) {
        unsigned char x = s[i];
        if (x < 0x80) { i++; continue; }
        size_t need;
        unsigned char lo = 0x80, hi = 0xBF;
        if (x >= 0xC2 && x <= 0xDF) need = 1;
        else if (x == 0xE0) { need = 2; lo = 0xA0; }
        else if (x == 0xED) { need = 2; hi = 0x9F; }
        else if (x >= 0xE1 && x <= 0xEF) need = 2;
        else if (x == 0xF0) { need = 3; lo = 0x90; }
        else if (x >= 0xF1 && x <= 0xF3) need = 3;
        else if (x == 0xF4) { need = 3; hi = 0x8F; }
        else return i;
        if (i + need >= n) return i; /* truncated sequence */
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (size_t k = 2; k <= need; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xBF) return i;
        i += need + 1;
    }
    return n;
}

/* 0, -1 out of memory, -2 a text value that is not valid UTF-8 (nothing written for it) */
static int put_value(buf_t *b, const col_t *c, const char *v, size_t n) {
    if (c->is_bytes) {
        if (buf_reserve(b, 2 + 2 * n + 1)) return -1;
        char *o = b->p + b->len;
        *o++ = '0'; *o++ = 'x';
        for (size_t i = 0; i < n; i++) {
            unsigned char x = (unsigned char)v[i];
            *o++ = HEX[x >> 4];
            *o++ = HEX[x & 15];
        }
        b->len = (size_t)(o - b->p);
        return 0;
    }
    int quote = 0;
    if (!c->plain) {
        if (utf8_valid_prefix(v, n) != n) return -2;
        if (n == 0) quote = 1;
        else
            for (size_t i = 0; i < n; i++)
                if (NEEDS_QUOTE[(unsigned char)v[i]]) { quote = 1; break; }
    }
    if (!quote) {
        if (buf_reserve(b, n + 1)) return -1;
        if (n) memcpy(b->p + b->len, v, n);
        b->len += n;
        return 0;
    }
    if (buf_reserve(b, 2 * n + 3)) return -1;
    char *o = b->p + b->len;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        if (v[i] == '"') *o++ = '"';
        *o++ = v[i];
    }
    *o++ = '"';
    b->len = (size_t)(o - b->p);
    return 0;
}

/* ------------------------------------------------------------------ the Result object */
typedef struct {
    PyObject_HEAD
    PyObject *conn; /* the MySQLdb connection: keeps the MYSQL* memory alive */
    MYSQL *mysql;
    MYSQL_RES *res;
    unsigned int ncols;
    long long rows;
    int done;
    int busy; /* stream() is running (maybe without the GIL): close() must wait for it */
} ResultObject;

static PyObject *raise_mysql(MYSQL *mysql) {
    PyObject *args = Py_BuildValue("(Is)", mysql_errno(mysql), mysql_error(mysql));
    if (args) {
        PyErr_SetObject(FastError, args);
        Py_DECREF(args);
    }
    return NULL;
}

static void result_free(ResultObject *self) {
    if (self->res) {
        MYSQL_RES *res = self->res;
        self->res = NULL;
        Py_BEGIN_ALLOW_THREADS
        mysql_free_result(res); /* an unfinished stream is skipped to its end by the client library */
        Py_END_ALLOW_THREADS
    }
}

/* What the Python engine's strict decoding raises for the same value. */
static void raise_not_utf8(const char *v, size_t n) {
    size_t at = utf8_valid_prefix(v, n);
    PyObject *e = PyUnicodeDecodeError_Create("utf-8", v, (Py_ssize_t)n, (Py_ssize_t)at, (Py_ssize_t)(at + 1),
                                              "invalid UTF-8 in a text column");
    if (e) { PyErr_SetObject(PyExc_UnicodeDecodeError, e); Py_DECREF(e); }
}

/* After mysql_fetch_row() returned NULL: 1 (error raised, result freed: nothing left to skip) when
 * the stream broke, 0 at its real end. */
static int stream_broken(ResultObject *self) {
    if (!mysql_errno(self->mysql)) return 0;
    raise_mysql(self->mysql);
    self->busy = 0;
    result_free(self);
    return 1;
}

static void Result_dealloc(ResultObject *self) {
    result_free(self);
    Py_XDECREF(self->conn);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Result_close(ResultObject *self, PyObject *Py_UNUSED(ignored)) {
    if (self->busy) { PyErr_SetString(PyExc_RuntimeError, "the result is being streamed"); return NULL; }
    result_free(self);
    Py_RETURN_NONE;
}

static PyObject *Result_get_rows(ResultObject *self, void *closure) { return PyLong_FromLongLong(self->rows); }

static PyObject *Result_get_fields(ResultObject *self, void *closure) {
    if (!self->res) { PyErr_SetString(PyExc_ValueError, "result is closed"); return NULL; }
    MYSQL_FIELD *f = mysql_fetch_fields(self->res);
    PyObject *list = PyList_New(self->ncols);
    if (!list) return NULL;
    for (unsigned int i = 0; i < self->ncols; i++) {
        PyObject *name = PyUnicode_DecodeUTF8(f[i].name, f[i].name_length, "surrogateescape");
        if (!name) { Py_DECREF(list); return NULL; }
        PyObject *t = Py_BuildValue("(NIIIkI)", name, (unsigned int)f[i].type, f[i].flags, f[i].charsetnr,
                                    f[i].length, f[i].decimals);
        if (!t) { Py_DECREF(list); return NULL; }
        PyList_SET_ITEM(list, i, t);
    }
    return list;
}

/* stream(write, columns, profile, key_positions, key_kinds, batch_rows, buf_size)
 * columns: one (plain, is_bytes, kind, count_empty) per column.
 * Returns (rows, profile, key) where profile is None or a list of
 * (nulls, empty, min bytes|None, max bytes|None, saturated, kept hashes) and key is None or
 * (nulls, duplicates, unsorted, example: None | (head values, tail values)). */
static PyObject *Result_stream(ResultObject *self, PyObject *args) {
    PyObject *write, *columns, *key_pos, *key_kinds;
    int profile;
    long long batch_rows;
    Py_ssize_t buf_size;
    if (!PyArg_ParseTuple(args, "OOpOOLn", &write, &columns, &profile, &key_pos, &key_kinds, &batch_rows, &buf_size))
        return NULL;
    if (!self->res || self->done || self->busy) {
        PyErr_SetString(PyExc_ValueError, "result is closed, being streamed or already streamed");
        return NULL;
    }
    if (!PyCallable_Check(write)) { PyErr_SetString(PyExc_TypeError, "write must be callable"); return NULL; }
    if (batch_rows < 1 || buf_size < 1) { PyErr_SetString(PyExc_ValueError, "batch_rows and buf_size must be >= 1"); return NULL; }
    unsigned int ncols = self->ncols;
    if (!PyList_Check(columns) || PyList_GET_SIZE(columns) != (Py_ssize_t)ncols) {
        PyErr_SetString(PyExc_ValueError, "columns: one tuple per result column"); return NULL;
    }
    if (!PyList_Check(key_pos) || !PyList_Check(key_kinds) || PyList_GET_SIZE(key_pos) != PyList_GET_SIZE(key_kinds)) {
        PyErr_SetString(PyExc_ValueError, "key positions and kinds: two lists of one length"); return NULL;
    }
    PyObject *out = NULL;
    int started = 0;
    buf_t buf = {0};
    key_t_ key;
    memset(&key, 0, sizeof key);
    col_t *cols = calloc(ncols ? ncols : 1, sizeof(col_t));
    if (!cols) return PyErr_NoMemory();
    for (unsigned int i = 0; i < ncols; i++) {
        PyObject *t = PyList_GET_ITEM(columns, i);
        if (!PyTuple_Check(t) || !PyArg_ParseTuple(t, "ppip;columns[i]: (plain, is_bytes, kind, count_empty)",
                                                   &cols[i].plain, &cols[i].is_bytes, &cols[i].kind, &cols[i].count_empty)) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "columns[i] must be a tuple");
            goto fail;
        }
        if (cols[i].kind < 0 || cols[i].kind > 2) { PyErr_SetString(PyExc_ValueError, "kind must be 0, 1 or 2"); goto fail; }
    }
    key.n = (int)PyList_GET_SIZE(key_pos);
    key.batch_rows = batch_rows;
    if (key.n) {
        key.pos = calloc(key.n, sizeof(int));
        key.kind = calloc(key.n, sizeof(int));
        key.prevd = calloc(key.n, sizeof(dec_t));
        key.prevd_ok = calloc(key.n, sizeof(int));
        key.prev = calloc(key.n, sizeof(buf_t));
        key.bex_head = calloc(key.n, sizeof(buf_t));
        key.bex_tail = calloc(key.n, sizeof(buf_t));
        key.ex_head = calloc(key.n, sizeof(buf_t));
        key.ex_tail = calloc(key.n, sizeof(buf_t));
        if (!key.pos || !key.kind || !key.prevd || !key.prevd_ok || !key.prev || !key.bex_head || !key.bex_tail || !key.ex_head || !key.ex_tail) {
            PyErr_NoMemory(); goto fail;
        }
        for (int i = 0; i < key.n; i++) {
            long p = PyLong_AsLong(PyList_GET_ITEM(key_pos, i));
            long k = PyLong_AsLong(PyList_GET_ITEM(key_kinds, i));
            if (PyErr_Occurred()) goto fail;
            if (p < 0 || p >= (long)ncols || k < 0 || k > 2) { PyErr_SetString(PyExc_ValueError, "bad key column"); goto fail; }
            key.pos[i] = (int)p;
            key.kind[i] = (int)k;
        }
    }
    if (buf_reserve(&buf, (size_t)buf_size + 4096)) { PyErr_NoMemory(); goto fail; }

    self->busy = 1;
    started = 1;
    for (;;) {
        int oom = 0, ended = 0, bad_col = -1;
        long long since = 0;
        MYSQL_ROW row;
        unsigned long *lengths;
        PyThreadState *ts = PyEval_SaveThread();
        while (buf.len < (size_t)buf_size && since < batch_rows) {
            row = mysql_fetch_row(self->res);
            if (!row) { ended = 1; break; }
            lengths = mysql_fetch_lengths(self->res);
            if (!lengths) { ended = 1; break; }
            for (unsigned int i = 0; i < ncols; i++) {
                col_t *c = &cols[i];
                if (i) {
                    if (buf_reserve(&buf, 1)) { oom = 1; break; }
                    buf.p[buf.len++] = ',';
                }
                if (!row[i]) { c->nulls++; continue; }
                int put = put_value(&buf, c, row[i], lengths[i]);
                if (put == -2) { bad_col = (int)i; break; }
                if (put) { oom = 1; break; }
                if (profile && col_add(c, row[i], lengths[i])) { oom = 1; break; }
            }
            if (oom || bad_col >= 0) break;
            if (buf_reserve(&buf, 1)) { oom = 1; break; }
            buf.p[buf.len++] = '\n';
            if (key.n && key_add(&key, row, lengths)) { oom = 1; break; }
            self->rows++;
            since++;
        }
        PyEval_RestoreThread(ts);
        if (oom) { PyErr_NoMemory(); goto fail; }
        if (bad_col >= 0) { raise_not_utf8(row[bad_col], lengths[bad_col]); goto fail; }
        if (ended && stream_broken(self)) goto fail;
        if (buf.len) {
            PyObject *data = PyBytes_FromStringAndSize(buf.p, (Py_ssize_t)buf.len);
            if (!data) goto fail;
            PyObject *r = PyObject_CallFunction(write, "NL", data, self->rows);
            if (!r) goto fail; /* the result stays open: the caller closes the connection first */
            Py_DECREF(r);
            buf.len = 0;
            if (buf.cap > 4 * (size_t)buf_size + 8192) { /* a huge row grew it: give the memory back */
                char *p = realloc(buf.p, (size_t)buf_size + 4096);
                if (p) { buf.p = p; buf.cap = (size_t)buf_size + 4096; }
            }
        }
        if (ended) break;
    }
    self->done = 1;
    self->busy = 0;
    result_free(self);
    key_end_batch(&key);

    PyObject *prof = Py_None, *keyinfo = Py_None;
    Py_INCREF(Py_None);
    Py_INCREF(Py_None);
    if (profile) {
        Py_DECREF(prof);
        prof = PyList_New(ncols);
        if (!prof) { Py_DECREF(keyinfo); goto fail; }
        for (unsigned int i = 0; i < ncols; i++) {
            col_t *c = &cols[i];
            PyObject *kept = sketch_kept(&c->sk);
            if (!kept) { Py_DECREF(prof); Py_DECREF(keyinfo); goto fail; }
            PyObject *t;
            if (c->has)
                t = Py_BuildValue("(LLy#y#iN)", c->nulls, c->empty, c->minv.p, (Py_ssize_t)c->minv.len, c->maxv.p,
                                  (Py_ssize_t)c->maxv.len, c->sk.saturated, kept);
            else
                t = Py_BuildValue("(LLOOiN)", c->nulls, c->empty, Py_None, Py_None, c->sk.saturated, kept);
            if (!t) { Py_DECREF(prof); Py_DECREF(keyinfo); goto fail; }
            PyList_SET_ITEM(prof, i, t);
        }
    }
    if (key.n) {
        PyObject *example = Py_None;
        Py_INCREF(Py_None);
        if (key.has_example) {
            PyObject *head = PyList_New(key.n), *tail = PyList_New(key.n);
            if (!head || !tail) { Py_XDECREF(head); Py_XDECREF(tail); Py_DECREF(example); Py_DECREF(prof); Py_DECREF(keyinfo); goto fail; }
            for (int i = 0; i < key.n; i++) {
                PyObject *h = PyBytes_FromStringAndSize(key.ex_head[i].p, (Py_ssize_t)key.ex_head[i].len);
                PyObject *t = PyBytes_FromStringAndSize(key.ex_tail[i].p, (Py_ssize_t)key.ex_tail[i].len);
                if (!h || !t) {
                    Py_XDECREF(h); Py_XDECREF(t); Py_DECREF(head); Py_DECREF(tail); Py_DECREF(example);
                    Py_DECREF(prof); Py_DECREF(keyinfo); goto fail;
                }
                PyList_SET_ITEM(head, i, h);
                PyList_SET_ITEM(tail, i, t);
            }
            Py_DECREF(example);
            example = Py_BuildValue("(NN)", head, tail);
            if (!example) { Py_DECREF(prof); Py_DECREF(keyinfo); goto fail; }
        }
        Py_DECREF(keyinfo);
        keyinfo = Py_BuildValue("(LLLN)", key.nulls, key.dups, key.unsorted, example);
        if (!keyinfo) { Py_DECREF(prof); goto fail; }
    }
    out = Py_BuildValue("(LNN)", self->rows, prof, keyinfo);
fail:
    self->busy = 0;
    if (!out && started) self->done = 1; /* a stream that failed part-way cannot be resumed mid-row */
    for (unsigned int i = 0; i < ncols; i++) {
        buf_free(&cols[i].minv);
        buf_free(&cols[i].maxv);
        sketch_free(&cols[i].sk);
    }
    free(cols);
    key_free(&key);
    buf_free(&buf);
    return out;
}

/* batches(emit, columns, batch_rows, batch_bytes) -> rows
 * The rows as Arrow `string` columns instead of CSV (the Arrow preprocess API): per batch of at most
 * batch_rows rows (or ~batch_bytes of values), one (offsets int32, values, validity | None, null_count)
 * tuple per column, handed to emit(columns, rows_in_batch, rows_so_far); Python wraps the buffers
 * without a copy. Values are the text the CSV would hold unquoted: binary (is_bytes) as "0x" + hex,
 * text checked to be UTF-8 (the same UnicodeDecodeError as stream()), NULL as a cleared validity bit.
 * columns: one (plain, is_bytes) per column (plain: numbers/dates, never checked). */
typedef struct {
    buf_t offs, data, valid;
    long long nulls;
} arrow_col_t;

static PyObject *arrow_col_tuple(arrow_col_t *c) {
    PyObject *valid = Py_None;
    if (c->nulls) valid = PyBytes_FromStringAndSize(c->valid.p, (Py_ssize_t)c->valid.len);
    else Py_INCREF(Py_None);
    if (!valid) return NULL;
    return Py_BuildValue("(y#y#NL)", c->offs.p, (Py_ssize_t)c->offs.len, c->data.p ? c->data.p : "",
                         (Py_ssize_t)c->data.len, valid, c->nulls);
}

static PyObject *Result_batches(ResultObject *self, PyObject *args) {
    PyObject *emit, *columns;
    long long batch_rows;
    Py_ssize_t batch_bytes;
    if (!PyArg_ParseTuple(args, "OO!Ln", &emit, &PyList_Type, &columns, &batch_rows, &batch_bytes)) return NULL;
    if (!self->res || self->done || self->busy) {
        PyErr_SetString(PyExc_ValueError, "result is closed, being streamed or already streamed");
        return NULL;
    }
    if (!PyCallable_Check(emit)) { PyErr_SetString(PyExc_TypeError, "emit must be callable"); return NULL; }
    if (batch_rows < 1 || batch_bytes < 1) { PyErr_SetString(PyExc_ValueError, "batch_rows and batch_bytes must be >= 1"); return NULL; }
    unsigned int ncols = self->ncols;
    if (PyList_GET_SIZE(columns) != (Py_ssize_t)ncols) {
        PyErr_SetString(PyExc_ValueError, "columns: one tuple per result column"); return NULL;
    }
    col_t *spec = calloc(ncols ? ncols : 1, sizeof(col_t));
    arrow_col_t *cols = calloc(ncols ? ncols : 1, sizeof(arrow_col_t));
    PyObject *out = NULL;
    int started = 0;
    if (!spec || !cols) { PyErr_NoMemory(); goto fail; }
    for (unsigned int i = 0; i < ncols; i++) {
        PyObject *t = PyList_GET_ITEM(columns, i);
        if (!PyTuple_Check(t) || !PyArg_ParseTuple(t, "pp;columns[i]: (plain, is_bytes)", &spec[i].plain, &spec[i].is_bytes)) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "columns[i] must be a tuple");
            goto fail;
        }
    }
    self->busy = 1;
    started = 1;
    for (;;) {
        int oom = 0, ended = 0, bad_col = -1, too_big = 0;
        long long n = 0;
        size_t bytes = 0;
        MYSQL_ROW row = NULL;
        unsigned long *lengths = NULL;
        for (unsigned int i = 0; i < ncols; i++) {
            cols[i].offs.len = cols[i].data.len = cols[i].valid.len = 0;
            cols[i].nulls = 0;
            int32_t zero = 0;
            if (buf_reserve(&cols[i].offs, 4)) { PyErr_NoMemory(); goto fail; }
            memcpy(cols[i].offs.p, &zero, 4);
            cols[i].offs.len = 4;
        }
        PyThreadState *ts = PyEval_SaveThread();
        while (n < batch_rows && bytes < (size_t)batch_bytes) {
            row = mysql_fetch_row(self->res);
            if (!row) { ended = 1; break; }
            lengths = mysql_fetch_lengths(self->res);
            if (!lengths) { ended = 1; break; }
            for (unsigned int i = 0; i < ncols && !oom; i++) {
                arrow_col_t *c = &cols[i];
                if ((n & 7) == 0) {
                    if (buf_reserve(&c->valid, 1)) { oom = 1; break; }
                    c->valid.p[c->valid.len++] = 0;
                }
                if (row[i]) {
                    c->valid.p[n >> 3] |= (char)(1 << (n & 7));
                    size_t len = lengths[i], need = spec[i].is_bytes ? 2 + 2 * len : len;
                    if (c->data.len + need > (size_t)INT32_MAX) { too_big = 1; break; }
                    if (!spec[i].is_bytes && !spec[i].plain && utf8_valid_prefix(row[i], len) != len) { bad_col = (int)i; break; }
                    if (buf_reserve(&c->data, need + 1)) { oom = 1; break; }
                    char *o = c->data.p + c->data.len;
                    if (spec[i].is_bytes) {
                        *o++ = '0'; *o++ = 'x';
                        for (size_t k = 0; k < len; k++) {
                            unsigned char x = (unsigned char)row[i][k];
                            *o++ = HEX[x >> 4];
                            *o++ = HEX[x & 15];
                        }
                    } else if (len) {
                        memcpy(o, row[i], len);
                    }
                    c->data.len += need;
                    bytes += need;
                } else {
                    c->nulls++;
                }
                int32_t end = (int32_t)c->data.len;
                if (buf_reserve(&c->offs, 4)) { oom = 1; break; }
                memcpy(c->offs.p + c->offs.len, &end, 4);
                c->offs.len += 4;
            }
            if (oom || bad_col >= 0 || too_big) break;
            n++;
            self->rows++;
        }
        PyEval_RestoreThread(ts);
        if (oom) { PyErr_NoMemory(); goto fail; }
        if (too_big) { /* one batch's column over Arrow's 2 GB `string` limit: only a huge value does that */
            PyErr_SetString(FastError, "a value is too large for an Arrow string column (over 2 GB in one batch)");
            goto fail;
        }
        if (bad_col >= 0) { raise_not_utf8(row[bad_col], lengths[bad_col]); goto fail; }
        if (ended && stream_broken(self)) goto fail;
        if (n) {
            PyObject *list = PyList_New(ncols);
            if (!list) goto fail;
            for (unsigned int i = 0; i < ncols; i++) {
                PyObject *t = arrow_col_tuple(&cols[i]);
                if (!t) { Py_DECREF(list); goto fail; }
                PyList_SET_ITEM(list, i, t);
            }
            PyObject *r = PyObject_CallFunction(emit, "NLL", list, n, self->rows);
            if (!r) goto fail; /* the result stays open: the caller closes the connection first */
            Py_DECREF(r);
            for (unsigned int i = 0; i < ncols; i++) { /* a huge value grew a buffer: give the memory back */
                if (cols[i].data.cap > 4 * (size_t)batch_bytes + 8192) { buf_free(&cols[i].data); }
            }
        }
        if (ended) break;
    }
    self->done = 1;
    self->busy = 0;
    result_free(self);
    out = PyLong_FromLongLong(self->rows);
fail:
    self->busy = 0;
    if (!out && started) self->done = 1; /* a stream that failed part-way cannot be resumed mid-row */
    if (cols)
        for (unsigned int i = 0; i < ncols; i++) { buf_free(&cols[i].offs); buf_free(&cols[i].data); buf_free(&cols[i].valid); }
    free(cols);
    free(spec);
    return out;
}

static PyMethodDef Result_methods[] = {
    {"stream", (PyCFunction)Result_stream, METH_VARARGS, "Stream the rows as CSV to write(bytes, rows); see the module doc."},
    {"batches", (PyCFunction)Result_batches, METH_VARARGS, "Stream the rows as Arrow string columns to emit(columns, n, rows)."},
    {"close", (PyCFunction)Result_close, METH_NOARGS, "Free the result (an unfinished stream is skipped to its end)."},
    {NULL}};

static PyGetSetDef Result_getset[] = {
    {"rows", (getter)Result_get_rows, NULL, "rows read so far", NULL},
    {"fields", (getter)Result_get_fields, NULL, "[(name, type, flags, charsetnr, length, decimals)]", NULL},
    {NULL}};

static PyTypeObject ResultType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dataset_registry._fastexport.Result",
    .tp_basicsize = sizeof(ResultObject),
    .tp_dealloc = (destructor)Result_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "An unbuffered result set on a MySQLdb connection.",
    .tp_methods = Result_methods,
    .tp_getset = Result_getset,
};

/* use_result(conn): after conn.query(sql): the unbuffered result, or None when the statement
 * returned no result set. */
static PyObject *use_result(PyObject *module, PyObject *conn) {
    PyObject *capsule = PyObject_CallMethod(conn, "_get_native_connection", NULL);
    if (!capsule) return NULL;
    MYSQL *mysql = PyCapsule_GetPointer(capsule, "_mysql.connection.native_connection");
    Py_DECREF(capsule);
    if (!mysql) return NULL;
    MYSQL_RES *res;
    Py_BEGIN_ALLOW_THREADS
    res = mysql_use_result(mysql);
    Py_END_ALLOW_THREADS
    if (!res) {
        if (mysql_errno(mysql)) return raise_mysql(mysql);
        Py_RETURN_NONE;
    }
    ResultObject *self = PyObject_New(ResultObject, &ResultType);
    if (!self) { mysql_free_result(res); return NULL; }
    Py_INCREF(conn);
    self->conn = conn;
    self->mysql = mysql;
    self->res = res;
    self->ncols = mysql_num_fields(res);
    self->rows = 0;
    self->done = 0;
    self->busy = 0;
    return (PyObject *)self;
}

static PyObject *hash_value(PyObject *module, PyObject *arg) { /* for tests: the sketch's hash */
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE)) return NULL;
    uint64_t h = hash_bytes(view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return PyLong_FromLongLong((int64_t)h);
}

/* hash_strings(offsets, data, start, count, wide) -> bytes: the sketch's hash of each of `count`
 * strings of an Arrow string array (offsets buffer of int32, or int64 when wide; values buffer),
 * from element `start` (the array's offset), as native int64s. Null slots hash their (empty) bytes:
 * the caller drops nulls first. Every offset is checked against both buffers before any read. */
static PyObject *hash_strings(PyObject *module, PyObject *args) {
    Py_buffer offs, data;
    Py_ssize_t start, count;
    int wide;
    if (!PyArg_ParseTuple(args, "y*y*nnp", &offs, &data, &start, &count, &wide)) return NULL;
    PyObject *out = NULL;
    size_t width = wide ? 8 : 4;
    if (start < 0 || count < 0 || (size_t)offs.len / width < (size_t)start + (size_t)count + 1) {
        PyErr_SetString(PyExc_ValueError, "hash_strings: the offsets buffer is shorter than start + count + 1");
        goto done;
    }
    out = PyBytes_FromStringAndSize(NULL, count * 8);
    if (!out) goto done;
    int64_t *hashes = (int64_t *)PyBytes_AS_STRING(out);
    const unsigned char *base = data.buf;
    size_t size = (size_t)data.len;
    int bad = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count; i++) {
        int64_t lo, hi;
        if (wide) {
            memcpy(&lo, (const char *)offs.buf + (start + i) * 8, 8);
            memcpy(&hi, (const char *)offs.buf + (start + i + 1) * 8, 8);
        } else {
            int32_t a, b;
            memcpy(&a, (const char *)offs.buf + (start + i) * 4, 4);
            memcpy(&b, (const char *)offs.buf + (start + i + 1) * 4, 4);
            lo = a;
            hi = b;
        }
        if (lo < 0 || hi < lo || (uint64_t)hi > size) { bad = 1; break; }
        hashes[i] = (int64_t)hash_bytes(base + lo, (size_t)(hi - lo));
    }
    Py_END_ALLOW_THREADS
    if (bad) {
        Py_CLEAR(out);
        PyErr_SetString(PyExc_ValueError, "hash_strings: an offset lies outside the values buffer");
    }
done:
    PyBuffer_Release(&offs);
    PyBuffer_Release(&data);
    return out;
}

/* format_batch(columns, rows) -> bytes: the CSV lines of one Arrow batch whose columns are already
 * printed as text (arrow_csv.column_text). columns: one (offsets, data, validity | None, offset,
 * quotable) per column, offsets int32 (Arrow `string`). NULL (validity bit 0) -> empty unquoted; a
 * quotable value is quoted as put_value quotes text; others are copied. Offsets and validity are
 * checked against the buffers' sizes first; the formatting runs with the GIL released. */
typedef struct {
    Py_buffer offs, data, valid;
    int has_valid, quotable;
    Py_ssize_t offset;
} text_col_t;

static PyObject *format_batch(PyObject *module, PyObject *args) {
    PyObject *columns;
    Py_ssize_t rows;
    if (!PyArg_ParseTuple(args, "O!n", &PyList_Type, &columns, &rows)) return NULL;
    Py_ssize_t ncols = PyList_GET_SIZE(columns);
    if (rows < 0 || ncols < 1) { PyErr_SetString(PyExc_ValueError, "format_batch: rows >= 0 and at least one column"); return NULL; }
    text_col_t *cols = calloc((size_t)ncols, sizeof(text_col_t));
    if (!cols) return PyErr_NoMemory();
    Py_ssize_t got = 0;
    PyObject *out = NULL;
    buf_t b = {0};
    for (; got < ncols; got++) {
        text_col_t *c = &cols[got];
        PyObject *valid;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(columns, got), "y*y*Onp;columns[i]: (offsets, data, validity, offset, quotable)",
                              &c->offs, &c->data, &valid, &c->offset, &c->quotable)) goto done;
        if (valid != Py_None) {
            if (PyObject_GetBuffer(valid, &c->valid, PyBUF_SIMPLE)) { PyBuffer_Release(&c->offs); PyBuffer_Release(&c->data); goto done; }
            c->has_valid = 1;
        }
        int bad = c->offset < 0 || (size_t)c->offs.len / 4 < (size_t)c->offset + (size_t)rows + 1 ||
                  (c->has_valid && (size_t)c->valid.len * 8 < (size_t)c->offset + (size_t)rows);
        if (bad) { got++; PyErr_SetString(PyExc_ValueError, "format_batch: a buffer is shorter than offset + rows"); goto done; }
    }
    int status = 0; /* -1 out of memory, -2 an offset outside its values buffer, -3 not UTF-8 */
    Py_ssize_t bad_col = 0, bad_row = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < rows && !status; r++) {
        for (Py_ssize_t i = 0; i < ncols; i++) {
            text_col_t *c = &cols[i];
            Py_ssize_t at = c->offset + r;
            if (i && (buf_reserve(&b, 1) ? (status = -1) : (b.p[b.len++] = ',', 0))) break;
            if (c->has_valid && !((((const unsigned char *)c->valid.buf)[at >> 3] >> (at & 7)) & 1)) continue;
            int32_t lo, hi;
            memcpy(&lo, (const char *)c->offs.buf + at * 4, 4);
            memcpy(&hi, (const char *)c->offs.buf + (at + 1) * 4, 4);
            if (lo < 0 || hi < lo || (size_t)hi > (size_t)c->data.len) { status = -2; break; }
            const char *v = (const char *)c->data.buf + lo;
            size_t n = (size_t)(hi - lo);
            int quote = 0;
            if (c->quotable) {
                /* Arrow strings are UTF-8 unless built unchecked (from_buffers): the CSV must be */
                if (utf8_valid_prefix(v, n) != n) { status = -3; bad_col = i; bad_row = r; break; }
                if (n == 0) quote = 1;
                else
                    for (size_t k = 0; k < n; k++)
                        if (NEEDS_QUOTE[(unsigned char)v[k]]) { quote = 1; break; }
            }
            if (buf_reserve(&b, quote ? 2 * n + 3 : n + 1)) { status = -1; break; }
            char *o = b.p + b.len;
            if (!quote) {
                if (n) memcpy(o, v, n);
                o += n;
            } else {
                *o++ = '"';
                for (size_t k = 0; k < n; k++) {
                    if (v[k] == '"') *o++ = '"';
                    *o++ = v[k];
                }
                *o++ = '"';
            }
            b.len = (size_t)(o - b.p);
        }
        if (!status && (buf_reserve(&b, 1) ? (status = -1) : (b.p[b.len++] = '\n', 0))) break;
    }
    Py_END_ALLOW_THREADS
    if (status == -1) PyErr_NoMemory();
    else if (status == -2) PyErr_SetString(PyExc_ValueError, "format_batch: an offset lies outside the values buffer");
    else if (status == -3)
        PyErr_Format(PyExc_ValueError, "column %zd, row %zd of the batch is not valid UTF-8 text", bad_col + 1, bad_row + 1);
    else out = PyBytes_FromStringAndSize(b.p ? b.p : "", (Py_ssize_t)b.len);
done:
    for (Py_ssize_t i = 0; i < got; i++) {
        PyBuffer_Release(&cols[i].offs);
        PyBuffer_Release(&cols[i].data);
        if (cols[i].has_valid) PyBuffer_Release(&cols[i].valid);
    }
    free(cols);
    buf_free(&b);
    return out;
}

static PyObject *client_info(PyObject *module, PyObject *Py_UNUSED(ignored)) {
    return PyUnicode_FromString(mysql_get_client_info());
}

static PyMethodDef module_methods[] = {
    {"client_info", client_info, METH_NOARGS, "mysql_get_client_info() of the library this module is linked with."},
    {"use_result", use_result, METH_O, "use_result(conn) -> Result | None, after conn.query(sql)."},
    {"hash_value", hash_value, METH_O, "The 64-bit hash (signed) the distinct sketch uses for a bytes value."},
    {"format_batch", format_batch, METH_VARARGS, "format_batch(columns, rows) -> the CSV lines of an Arrow batch printed as text."},
    {"hash_strings", hash_strings, METH_VARARGS, "hash_strings(offsets, data, start, count, wide) -> int64 hashes of an Arrow string array's values."},
    {NULL}};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "_fastexport", "The C export engine.", -1, module_methods};

PyMODINIT_FUNC PyInit__fastexport(void) {
    NEEDS_QUOTE[(unsigned char)'"'] = NEEDS_QUOTE[(unsigned char)','] = 1;
    NEEDS_QUOTE[(unsigned char)'\r'] = NEEDS_QUOTE[(unsigned char)'\n'] = 1;
    if (PyType_Ready(&ResultType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    FastError = PyErr_NewException("dataset_registry._fastexport.Error", PyExc_RuntimeError, NULL);
    if (!FastError || PyModule_AddObject(m, "Error", FastError) < 0) { Py_XDECREF(FastError); Py_DECREF(m); return NULL; }
    Py_INCREF(FastError);
    PyModule_AddIntConstant(m, "SKETCH_K", SKETCH_K);
    return m;
}
