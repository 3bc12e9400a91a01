/*
 * paykeep.ledger._fastpath — the compiled core of the ledger's plain-transfer hot path.
 *
 * One call, plan_plain(), decides a batch whose items are ALL plain transfers (flags 0, no
 * pending id, timeout, reference or metadata, exact ints within the limits, a known
 * currency) and that would ALL be decided `ok`: it applies them to the working `Balances`,
 * seals the journal rows into the hash chain and returns what the writer needs. In every
 * other case it returns None having changed nothing, and the pure-Python engine
 * (`model.plan_transfers` + `model.seal`) decides the batch and its exact result codes.
 *
 * The pure-Python code is the reference: the rows, hashes, balances, head and results built
 * here must equal its own (tests/ledger/test_compiled_core.py compares them).
 *
 * Safety rules followed throughout:
 *  - every object this call keeps is held by a strong reference until it returns;
 *  - every allocation is checked; on failure everything is released and the error raised;
 *  - nothing visible to Python is changed until the whole batch has passed and every object
 *    the result needs has been built; the `Balances` are then updated by pointer swaps that
 *    cannot fail;
 *  - the zero-sum invariant is then checked from the `Balances` objects as stored, against
 *    sums taken before any change, independently of the arithmetic that applied the batch.
 *
 * SHA-256 comes from OpenSSL's libcrypto (EVP), never from hand-written code.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <openssl/evp.h>
#include <openssl/opensslv.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------
 * Configuration: the record classes and the offsets of their slots, resolved once.
 * ---------------------------------------------------------------------------------------- */

static PyTypeObject *NewTransfer_t = NULL;
static PyTypeObject *Balances_t = NULL;
static PyTypeObject *TransferResult_t = NULL;
static PyObject *ok_code = NULL;        /* CreateTransferResult.OK */
static PyObject *is_currency_fn = NULL; /* paykeep.money.is_currency */
static PyObject *invariant_exc = NULL;  /* model.LedgerInvariantBroken */
static PyObject *empty_str = NULL;
static PyObject *zero = NULL;

static Py_ssize_t nt_id, nt_debit, nt_credit, nt_amount, nt_currency, nt_code, nt_flags,
    nt_pending_id, nt_timeout, nt_reference, nt_metadata;
static Py_ssize_t b_currency, b_flags, b_dp, b_dpo, b_cp, b_cpo;
static Py_ssize_t r_index, r_id, r_result, r_ts;

static const EVP_MD *sha256_md = NULL;
/* Tests only (`_inject_arithmetic_fault`): the next applied batch's first account gets one
 * minor unit too many, which the zero-sum check must catch. */
static int arithmetic_fault = 0;
static unsigned long long batches_applied = 0;
static unsigned long long batches_declined = 0;

#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

/* The offset of slot `name` of `cls`: it must be a plain object slot that `cls` itself
 * declares (a slotted dataclass), so reading it at that offset in an object whose type is
 * exactly `cls` is what the member descriptor would do. */
static int
slot_offset(PyTypeObject *cls, const char *name, Py_ssize_t *out)
{
    PyObject *descr = PyObject_GetAttrString((PyObject *)cls, name);
    if (descr == NULL)
        return -1;
    if (!Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        PyErr_Format(PyExc_TypeError, "%s.%s is not a slot", cls->tp_name, name);
        Py_DECREF(descr);
        return -1;
    }
    PyMemberDescrObject *member = (PyMemberDescrObject *)descr;
    PyMemberDef *def = member->d_member;
    if (member->d_common.d_type != cls || def->type != T_OBJECT_EX || (def->flags & READONLY) ||
        def->offset < (Py_ssize_t)sizeof(PyObject) ||
        def->offset + (Py_ssize_t)sizeof(PyObject *) > cls->tp_basicsize) {
        PyErr_Format(PyExc_TypeError, "%s.%s is not a writable object slot of its class",
                     cls->tp_name, name);
        Py_DECREF(descr);
        return -1;
    }
    *out = def->offset;
    Py_DECREF(descr);
    return 0;
}

static PyObject *
configure(PyObject *self, PyObject *args)
{
    PyObject *nt, *bal, *res, *ok, *is_cur, *exc;
    if (!PyArg_ParseTuple(args, "O!O!O!OOO:configure", &PyType_Type, &nt, &PyType_Type, &bal,
                          &PyType_Type, &res, &ok, &is_cur, &exc))
        return NULL;
    PyTypeObject *ntt = (PyTypeObject *)nt, *bt = (PyTypeObject *)bal,
                 *rt = (PyTypeObject *)res;
    if (slot_offset(ntt, "id", &nt_id) || slot_offset(ntt, "debit_account_id", &nt_debit) ||
        slot_offset(ntt, "credit_account_id", &nt_credit) ||
        slot_offset(ntt, "amount_minor", &nt_amount) ||
        slot_offset(ntt, "currency", &nt_currency) || slot_offset(ntt, "code", &nt_code) ||
        slot_offset(ntt, "flags", &nt_flags) || slot_offset(ntt, "pending_id", &nt_pending_id) ||
        slot_offset(ntt, "timeout_s", &nt_timeout) ||
        slot_offset(ntt, "reference", &nt_reference) ||
        slot_offset(ntt, "metadata", &nt_metadata) || slot_offset(bt, "currency", &b_currency) ||
        slot_offset(bt, "flags", &b_flags) || slot_offset(bt, "debits_pending", &b_dp) ||
        slot_offset(bt, "debits_posted", &b_dpo) || slot_offset(bt, "credits_pending", &b_cp) ||
        slot_offset(bt, "credits_posted", &b_cpo) || slot_offset(rt, "index", &r_index) ||
        slot_offset(rt, "id", &r_id) || slot_offset(rt, "result", &r_result) ||
        slot_offset(rt, "timestamp_ns", &r_ts))
        return NULL;
    if (rt->tp_alloc == NULL || !PyCallable_Check(is_cur) || !PyExceptionClass_Check(exc)) {
        PyErr_SetString(PyExc_TypeError, "configure: unusable arguments");
        return NULL;
    }
    Py_INCREF(nt);
    Py_XSETREF(NewTransfer_t, ntt);
    Py_INCREF(bal);
    Py_XSETREF(Balances_t, bt);
    Py_INCREF(res);
    Py_XSETREF(TransferResult_t, rt);
    Py_INCREF(ok);
    Py_XSETREF(ok_code, ok);
    Py_INCREF(is_cur);
    Py_XSETREF(is_currency_fn, is_cur);
    Py_INCREF(exc);
    Py_XSETREF(invariant_exc, exc);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------------------------
 * Helpers
 * ---------------------------------------------------------------------------------------- */

/* 1: `o` is an exact int that fits int64 (stored in *out); 0: it is not; -1: error. */
static int
exact_i64(PyObject *o, int64_t *out)
{
    if (o == NULL || !PyLong_CheckExact(o))
        return 0;
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow)
        return 0;
    if (v == -1 && PyErr_Occurred())
        return -1;
    *out = (int64_t)v;
    return 1;
}

static int
hex_value(Py_UCS4 c)
{
    if (c >= '0' && c <= '9')
        return (int)(c - '0');
    if (c >= 'a' && c <= 'f')
        return (int)(c - 'a' + 10);
    if (c >= 'A' && c <= 'F')
        return (int)(c - 'A' + 10);
    return -1;
}

static void
put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (unsigned char)(v & 0xff);
        v >>= 8;
    }
}

static void
put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* Open-addressing table of positive int64 keys (0 marks an empty cell) -> int32 values. */
typedef struct {
    int64_t *keys;
    int32_t *values;
    size_t mask;
} Table;

static int
table_init(Table *t, size_t at_least)
{
    size_t size = 16;
    while (size < at_least * 2)
        size <<= 1;
    t->keys = PyMem_Calloc(size, sizeof(int64_t));
    t->values = PyMem_Calloc(size, sizeof(int32_t));
    t->mask = size - 1;
    if (t->keys == NULL || t->values == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void
table_free(Table *t)
{
    PyMem_Free(t->keys);
    PyMem_Free(t->values);
}

/* The cell of `key`: either holding it or the empty cell where it belongs. */
static size_t
table_cell(const Table *t, int64_t key)
{
    uint64_t h = (uint64_t)key * 0x9E3779B97F4A7C15ull;
    size_t i = (size_t)(h >> 32) & t->mask;
    while (t->keys[i] != 0 && t->keys[i] != key)
        i = (i + 1) & t->mask;
    return i;
}

/* ------------------------------------------------------------------------------------------
 * plan_plain
 * ---------------------------------------------------------------------------------------- */

/* One batch item, its fields held by strong references. */
typedef struct {
    PyObject *id, *debit, *credit, *amount, *currency, *code;
    PyObject *debit_balances, *credit_balances; /* accounts[debit], accounts[credit] */
    int64_t id_v, debit_v, credit_v, amount_v, code_v;
    int32_t currency_ix;
} Item;

/* One account the batch touches. `*_v` are the balances as read; `new_*` the working ones. */
typedef struct {
    PyObject *id;       /* the first item id object naming it */
    PyObject *balances; /* the Balances object */
    PyObject *dp, *cp;  /* unchanged by plain transfers: reused in the UPDATE parameters */
    PyObject *new_dpo, *new_cpo;
    int64_t id_v, flags, dp_v, dpo_v, cp_v, cpo_v, new_dpo_v, new_cpo_v;
    int32_t currency_ix;
} Account;

#define CURRENCIES_MAX 16
#define CURRENCY_BYTES_MAX 64
/* prev digest, seq id debit credit amount (Q), code (H), flags (I), pending (Q),
 * timeout (I), expiry (Q), timestamp (Q), then the texts. */
#define FIXED_BYTES (32 + 8 * 5 + 2 + 4 + 8 + 4 + 8 + 8)

typedef struct {
    int64_t id;
    int32_t index;
} IdIndex;

static int
by_id(const void *a, const void *b)
{
    int64_t x = ((const IdIndex *)a)->id, y = ((const IdIndex *)b)->id;
    return (x > y) - (x < y);
}

typedef struct {
    Py_ssize_t n;
    IdIndex *order; /* the accounts by id */
    Item *items;
    Py_ssize_t n_accounts;
    Account *accounts;
    Table transfer_ids, account_ix;
    Table balances_seen; /* Balances object addresses: one object under two ids declines */
    PyObject *currencies[CURRENCIES_MAX];
    int n_currencies;
    EVP_MD_CTX *ctx;
} State;

static void
state_free(State *s)
{
    if (s->items != NULL) {
        for (Py_ssize_t i = 0; i < s->n; i++) {
            Item *it = &s->items[i];
            Py_XDECREF(it->id);
            Py_XDECREF(it->debit);
            Py_XDECREF(it->credit);
            Py_XDECREF(it->amount);
            Py_XDECREF(it->currency);
            Py_XDECREF(it->code);
            Py_XDECREF(it->debit_balances);
            Py_XDECREF(it->credit_balances);
        }
        PyMem_Free(s->items);
    }
    if (s->accounts != NULL) {
        for (Py_ssize_t i = 0; i < s->n_accounts; i++) {
            Account *a = &s->accounts[i];
            Py_XDECREF(a->id);
            Py_XDECREF(a->balances);
            Py_XDECREF(a->dp);
            Py_XDECREF(a->cp);
            Py_XDECREF(a->new_dpo);
            Py_XDECREF(a->new_cpo);
        }
        PyMem_Free(s->accounts);
    }
    PyMem_Free(s->order);
    table_free(&s->transfer_ids);
    table_free(&s->account_ix);
    table_free(&s->balances_seen);
    for (int i = 0; i < s->n_currencies; i++)
        Py_DECREF(s->currencies[i]);
    if (s->ctx != NULL)
        EVP_MD_CTX_free(s->ctx);
}

/* Index of currency `cur` (an exact str) among the batch's known currencies; -1: none equal
 * (or error, with an exception set). */
static int
find_currency(State *s, PyObject *cur)
{
    for (int i = 0; i < s->n_currencies; i++)
        if (s->currencies[i] == cur)
            return i;
    for (int i = 0; i < s->n_currencies; i++) {
        int eq = PyUnicode_Compare(s->currencies[i], cur);
        if (eq == -1 && PyErr_Occurred())
            return -1;
        if (eq == 0)
            return i;
    }
    return -1;
}

/* 1: account `id`, whose balances are `bal`, has plain-readable balances (its index in *ix);
 * 0: decline; -1: error. */
static int
account_for(State *s, PyObject *bal, PyObject *id, int64_t id_v, int32_t *ix)
{
    size_t cell = table_cell(&s->account_ix, id_v);
    if (s->account_ix.keys[cell] == id_v) {
        *ix = s->account_ix.values[cell];
        return 1;
    }
    if (!Py_IS_TYPE(bal, Balances_t))
        return 0;
    int64_t address = (int64_t)(intptr_t)bal;
    if (address <= 0)
        return 0;
    size_t seen = table_cell(&s->balances_seen, address);
    if (s->balances_seen.keys[seen] == address)
        return 0; /* the pure path applies aliased balances one after the other */
    PyObject *cur = SLOT(bal, b_currency);
    if (cur == NULL || !PyUnicode_CheckExact(cur))
        return 0;
    int c = find_currency(s, cur);
    if (c < 0)
        return PyErr_Occurred() ? -1 : 0; /* not the currency of any item: a mismatch */
    Account *a = &s->accounts[s->n_accounts];
    int r;
    if ((r = exact_i64(SLOT(bal, b_flags), &a->flags)) != 1 ||
        (r = exact_i64(SLOT(bal, b_dp), &a->dp_v)) != 1 ||
        (r = exact_i64(SLOT(bal, b_dpo), &a->dpo_v)) != 1 ||
        (r = exact_i64(SLOT(bal, b_cp), &a->cp_v)) != 1 ||
        (r = exact_i64(SLOT(bal, b_cpo), &a->cpo_v)) != 1)
        return r;
    a->id_v = id_v;
    a->new_dpo_v = a->dpo_v;
    a->new_cpo_v = a->cpo_v;
    a->currency_ix = c;
    Py_INCREF(id);
    a->id = id;
    Py_INCREF(bal);
    a->balances = bal;
    a->dp = Py_NewRef(SLOT(bal, b_dp));
    a->cp = Py_NewRef(SLOT(bal, b_cp));
    s->balances_seen.keys[seen] = address;
    s->account_ix.keys[cell] = id_v;
    s->account_ix.values[cell] = (int32_t)s->n_accounts;
    *ix = (int32_t)s->n_accounts;
    s->n_accounts++;
    return 1;
}

/* 1: `item` is plain and valid (fields stored in *it); 0: decline; -1: error. */
static int
read_item(State *s, PyObject *item, Item *it, int64_t id_max, int64_t amount_max,
          int64_t code_max)
{
    if (!Py_IS_TYPE(item, NewTransfer_t))
        return 0;
    int64_t flags, timeout;
    int r;
    if ((r = exact_i64(SLOT(item, nt_flags), &flags)) != 1)
        return r;
    if ((r = exact_i64(SLOT(item, nt_timeout), &timeout)) != 1)
        return r;
    if (flags != 0 || timeout != 0 || SLOT(item, nt_pending_id) != Py_None ||
        SLOT(item, nt_reference) != Py_None || SLOT(item, nt_metadata) != Py_None)
        return 0;
    PyObject *id = SLOT(item, nt_id), *debit = SLOT(item, nt_debit),
             *credit = SLOT(item, nt_credit), *amount = SLOT(item, nt_amount),
             *code = SLOT(item, nt_code), *cur = SLOT(item, nt_currency);
    if ((r = exact_i64(id, &it->id_v)) != 1 || (r = exact_i64(debit, &it->debit_v)) != 1 ||
        (r = exact_i64(credit, &it->credit_v)) != 1 ||
        (r = exact_i64(amount, &it->amount_v)) != 1 || (r = exact_i64(code, &it->code_v)) != 1)
        return r;
    if (!(0 < it->id_v && it->id_v <= id_max) || !(0 < it->debit_v && it->debit_v <= id_max) ||
        !(0 < it->credit_v && it->credit_v <= id_max) || it->debit_v == it->credit_v ||
        !(0 < it->amount_v && it->amount_v <= amount_max) ||
        !(0 < it->code_v && it->code_v <= code_max))
        return 0;
    if (cur == NULL || !PyUnicode_CheckExact(cur))
        return 0;
    int c = find_currency(s, cur);
    if (c < 0) {
        if (PyErr_Occurred())
            return -1;
        if (s->n_currencies == CURRENCIES_MAX)
            return 0;
        Py_ssize_t size;
        const char *utf8 = PyUnicode_AsUTF8AndSize(cur, &size);
        if (utf8 == NULL) {
            /* Not encodable (a lone surrogate): no currency; the pure path decides. */
            PyErr_Clear();
            return 0;
        }
        if (size == 0 || size > CURRENCY_BYTES_MAX)
            return 0;
        PyObject *known = PyObject_CallOneArg(is_currency_fn, cur);
        if (known == NULL)
            return -1;
        int valid = known == Py_True;
        Py_DECREF(known);
        if (!valid)
            return 0;
        Py_INCREF(cur);
        s->currencies[s->n_currencies] = cur;
        c = s->n_currencies++;
    }
    it->currency_ix = c;
    it->id = Py_NewRef(id);
    it->debit = Py_NewRef(debit);
    it->credit = Py_NewRef(credit);
    it->amount = Py_NewRef(amount);
    it->code = Py_NewRef(code);
    it->currency = Py_NewRef(cur);
    return 1;
}

static PyObject *
hex_digest(const unsigned char *digest)
{
    static const char digits[] = "0123456789abcdef";
    PyObject *out = PyUnicode_New(64, 127);
    if (out == NULL)
        return NULL;
    Py_UCS1 *p = PyUnicode_1BYTE_DATA(out);
    for (int i = 0; i < 32; i++) {
        p[2 * i] = (Py_UCS1)digits[digest[i] >> 4];
        p[2 * i + 1] = (Py_UCS1)digits[digest[i] & 0xf];
    }
    return out;
}

static int
sum_balances(State *s, int from_objects, __int128 *pending, __int128 *posted)
{
    for (int c = 0; c < CURRENCIES_MAX; c++)
        pending[c] = posted[c] = 0;
    for (Py_ssize_t i = 0; i < s->n_accounts; i++) {
        Account *a = &s->accounts[i];
        int64_t dp = a->dp_v, dpo = a->dpo_v, cp = a->cp_v, cpo = a->cpo_v;
        if (from_objects) {
            PyObject *bal = a->balances;
            if (exact_i64(SLOT(bal, b_dp), &dp) != 1 || exact_i64(SLOT(bal, b_dpo), &dpo) != 1 ||
                exact_i64(SLOT(bal, b_cp), &cp) != 1 || exact_i64(SLOT(bal, b_cpo), &cpo) != 1) {
                if (!PyErr_Occurred())
                    PyErr_SetString(invariant_exc, "a balance is not an int after the batch");
                return -1;
            }
        }
        pending[a->currency_ix] += (__int128)dp - (__int128)cp;
        posted[a->currency_ix] += (__int128)dpo - (__int128)cpo;
    }
    return 0;
}

/* The journal row's fields a plain row varies in, in row order: seq, id, debit, credit,
 * amount, currency, code, timestamp, hash (`repository._PLAIN_VALUES` binds them). */
static const int PLAIN_COLUMNS[] = {0, 1, 2, 3, 4, 5, 6, 13, 14};
#define N_PLAIN_COLUMNS ((int)(sizeof(PLAIN_COLUMNS) / sizeof(PLAIN_COLUMNS[0])))

#define DECLINE 0
#define FAIL (-1)

/*
 * plan_plain(batch, accounts, stored, head_seq, head_ts, head_hash, now_ns,
 *            id_max, amount_max, code_max, balance_max, dmnec, cmned, group_rows)
 * -> (rows, insert_groups, balance_rows, touched_ids, results, seq, ts, hash): applied
 *    (insert_groups: whole groups of `group_rows` rows, each flattened to PLAIN_COLUMNS);
 *    None: declined, nothing changed;
 *    [account id, ...]: every item is plain, these accounts are not in `accounts` (nothing
 *    decided or changed): load them and call again.
 */
static PyObject *
plan_plain(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 14) {
        PyErr_SetString(PyExc_TypeError, "plan_plain takes 14 arguments");
        return NULL;
    }
    if (NewTransfer_t == NULL || sha256_md == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "plan_plain: configure() was not called");
        return NULL;
    }
    PyObject *batch = args[0], *accounts = args[1], *stored = args[2], *head_hash = args[5];
    int64_t head_seq, head_ts, now_ns, id_max, amount_max, code_max, bmax, dmnec, cmned,
        group_rows;
    State s;
    memset(&s, 0, sizeof(s));
    PyObject *rows = NULL, *groups = NULL, *balance_rows = NULL, *touched = NULL,
             *results = NULL, *out = NULL, *missing = NULL;
    int status = DECLINE;
    unsigned char prev[32];

    if (!(PyList_CheckExact(batch) || PyTuple_CheckExact(batch)) || !PyDict_CheckExact(accounts) ||
        !PyDict_CheckExact(stored) || !PyUnicode_CheckExact(head_hash))
        goto done;
    PyObject *const *scalars = args + 3;
    int64_t *targets[] = {&head_seq, &head_ts, NULL, &now_ns, &id_max, &amount_max,
                          &code_max, &bmax,     &dmnec, &cmned, &group_rows};
    for (int k = 0; k < 11; k++) {
        if (targets[k] == NULL)
            continue;
        int r = exact_i64(scalars[k], targets[k]);
        if (r != 1) {
            status = r;
            goto done;
        }
    }
    s.n = PySequence_Fast_GET_SIZE(batch);
    /* The encoding packs the code in 2 bytes: a wider limit is not this code's to judge. */
    if (s.n == 0 || head_seq < 0 || head_ts < 0 || now_ns < 0 || group_rows <= 0 ||
        amount_max <= 0 || code_max > 0xFFFF || PyUnicode_GET_LENGTH(head_hash) != 64)
        goto done;
    /* Seq and timestamps of the rows: seq + k and max(now, head ts) + k, k = 1..n. */
    int64_t ts0 = now_ns > head_ts ? now_ns : head_ts;
    if (head_seq > INT64_MAX - s.n || ts0 > INT64_MAX - s.n)
        goto done;
    for (int i = 0; i < 32; i++) {
        int hi = hex_value(PyUnicode_READ_CHAR(head_hash, 2 * i));
        int lo = hex_value(PyUnicode_READ_CHAR(head_hash, 2 * i + 1));
        if (hi < 0 || lo < 0)
            goto done;
        prev[i] = (unsigned char)(hi << 4 | lo);
    }

    s.items = PyMem_Calloc((size_t)s.n, sizeof(Item));
    s.accounts = PyMem_Calloc((size_t)s.n * 2, sizeof(Account));
    if (s.items == NULL || s.accounts == NULL) {
        PyErr_NoMemory();
        status = FAIL;
        goto done;
    }
    if (table_init(&s.transfer_ids, (size_t)s.n) || table_init(&s.account_ix, (size_t)s.n * 2) ||
        table_init(&s.balances_seen, (size_t)s.n * 2)) {
        status = FAIL;
        goto done;
    }
    int check_stored = PyDict_GET_SIZE(stored) > 0;

    /* ---- decide every item; nothing outside this call changes here ---------------------- */
    for (Py_ssize_t i = 0; i < s.n; i++) {
        Item *it = &s.items[i];
        /* The batch is held by the caller; read it afresh each time (is_currency may run). */
        if (i >= PySequence_Fast_GET_SIZE(batch))
            goto done;
        PyObject *item = Py_NewRef(PySequence_Fast_GET_ITEM(batch, i));
        int r = read_item(&s, item, it, id_max, amount_max, code_max);
        Py_DECREF(item);
        if (r != 1) {
            status = r;
            goto done;
        }
        size_t cell = table_cell(&s.transfer_ids, it->id_v);
        if (s.transfer_ids.keys[cell] == it->id_v)
            goto done; /* the same id twice in the batch */
        s.transfer_ids.keys[cell] = it->id_v;
        if (check_stored) {
            r = PyDict_Contains(stored, it->id);
            if (r != 0) {
                status = r < 0 ? FAIL : DECLINE; /* a replay: the pure path answers it */
                goto done;
            }
        }
    }
    /* Every item is plain. The accounts' balances, each looked up once: the ids absent from
     * `accounts` are returned (a list) for the caller to load, and then to call again. */
    for (Py_ssize_t i = 0; i < s.n; i++) {
        Item *it = &s.items[i];
        PyObject *pair[2] = {it->debit, it->credit};
        PyObject **found[2] = {&it->debit_balances, &it->credit_balances};
        for (int k = 0; k < 2; k++) {
            PyObject *bal = PyDict_GetItemWithError(accounts, pair[k]); /* borrowed */
            if (bal != NULL) {
                *found[k] = Py_NewRef(bal);
                continue;
            }
            if (PyErr_Occurred()) {
                status = FAIL;
                goto done;
            }
            if (missing == NULL && (missing = PyList_New(0)) == NULL) {
                status = FAIL;
                goto done;
            }
            if (PyList_Append(missing, pair[k]) < 0) {
                status = FAIL;
                goto done;
            }
        }
    }
    if (missing != NULL) {
        status = 2;
        goto done;
    }
    for (Py_ssize_t i = 0; i < s.n; i++) {
        Item *it = &s.items[i];
        int r;
        int32_t d_ix, c_ix;
        if ((r = account_for(&s, it->debit_balances, it->debit, it->debit_v, &d_ix)) != 1 ||
            (r = account_for(&s, it->credit_balances, it->credit, it->credit_v, &c_ix)) != 1) {
            status = r;
            goto done;
        }
        Account *debit = &s.accounts[d_ix], *credit = &s.accounts[c_ix];
        if (debit->currency_ix != it->currency_ix || credit->currency_ix != it->currency_ix)
            goto done;
        /* The limits of `model.plan_transfers`' plain branch, on the working balances; any
         * int64 overflow is beyond every limit, and the pure path then decides. */
        int64_t dp = debit->dp_v, cp = credit->cp_v, dpo, cpo, d_total, c_total;
        if (__builtin_add_overflow(debit->new_dpo_v, it->amount_v, &dpo) ||
            __builtin_add_overflow(credit->new_cpo_v, it->amount_v, &cpo) ||
            __builtin_add_overflow(dp, dpo, &d_total) ||
            __builtin_add_overflow(cp, cpo, &c_total))
            goto done;
        if (dp > bmax || cp > bmax || dpo > bmax || cpo > bmax || d_total > bmax ||
            c_total > bmax)
            goto done;
        if ((debit->flags & dmnec) && d_total > debit->new_cpo_v)
            goto done;
        if ((credit->flags & cmned) && c_total > credit->new_dpo_v)
            goto done;
        debit->new_dpo_v = dpo;
        credit->new_cpo_v = cpo;
    }

    /* ---- build everything the caller gets (still nothing visible changed) -------------- */
    __int128 pending_before[CURRENCIES_MAX], posted_before[CURRENCIES_MAX];
    sum_balances(&s, 0, pending_before, posted_before);
    if (arithmetic_fault && s.n_accounts > 0 && s.accounts[0].new_dpo_v < INT64_MAX) {
        arithmetic_fault = 0;
        s.accounts[0].new_dpo_v += 1;
    }

    for (Py_ssize_t k = 0; k < s.n_accounts; k++) {
        Account *a = &s.accounts[k];
        a->new_dpo = PyLong_FromLongLong(a->new_dpo_v);
        a->new_cpo = PyLong_FromLongLong(a->new_cpo_v);
        if (a->new_dpo == NULL || a->new_cpo == NULL) {
            status = FAIL;
            goto done;
        }
    }
    s.ctx = EVP_MD_CTX_new();
    rows = PyList_New(s.n);
    results = PyList_New(s.n);
    balance_rows = PyList_New(s.n_accounts);
    touched = PyList_New(s.n_accounts);
    if (s.ctx == NULL || rows == NULL || results == NULL || balance_rows == NULL ||
        touched == NULL) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        status = FAIL;
        goto done;
    }
    unsigned char buf[FIXED_BYTES + 4 + CURRENCY_BYTES_MAX + 8];
    PyObject *last_seq = NULL, *last_ts = NULL, *last_hash = NULL;
    for (Py_ssize_t i = 0; i < s.n; i++) {
        Item *it = &s.items[i];
        int64_t seq = head_seq + 1 + i, ts = ts0 + 1 + i;
        Py_ssize_t cur_size;
        const char *cur = PyUnicode_AsUTF8AndSize(it->currency, &cur_size); /* cached */
        if (cur == NULL) {
            status = FAIL;
            goto done;
        }
        /* The bytes `model.row_digest` hashes for a row without reference or metadata. */
        unsigned char *p = buf;
        memcpy(p, prev, 32);
        p += 32;
        put_u64(p, (uint64_t)seq), p += 8;
        put_u64(p, (uint64_t)it->id_v), p += 8;
        put_u64(p, (uint64_t)it->debit_v), p += 8;
        put_u64(p, (uint64_t)it->credit_v), p += 8;
        put_u64(p, (uint64_t)it->amount_v), p += 8;
        *p++ = (unsigned char)(it->code_v >> 8);
        *p++ = (unsigned char)it->code_v;
        put_u32(p, 0), p += 4;  /* flags */
        put_u64(p, 0), p += 8;  /* pending id */
        put_u32(p, 0), p += 4;  /* timeout */
        put_u64(p, 0), p += 8;  /* expiry */
        put_u64(p, (uint64_t)ts), p += 8;
        put_u32(p, (uint32_t)cur_size), p += 4;
        memcpy(p, cur, (size_t)cur_size);
        p += cur_size;
        put_u32(p, 0), p += 4; /* reference */
        put_u32(p, 0), p += 4; /* metadata */
        unsigned int len = 0;
        if (EVP_DigestInit_ex(s.ctx, sha256_md, NULL) != 1 ||
            EVP_DigestUpdate(s.ctx, buf, (size_t)(p - buf)) != 1 ||
            EVP_DigestFinal_ex(s.ctx, prev, &len) != 1 || len != 32) {
            PyErr_SetString(PyExc_RuntimeError, "OpenSSL SHA-256 failed");
            status = FAIL;
            goto done;
        }
        PyObject *seq_o = PyLong_FromLongLong(seq);
        PyObject *ts_o = PyLong_FromLongLong(ts);
        PyObject *hash_o = hex_digest(prev);
        PyObject *row = PyTuple_New(15);
        PyObject *index_o = PyLong_FromSsize_t(i);
        PyObject *result = TransferResult_t->tp_alloc(TransferResult_t, 0);
        if (seq_o == NULL || ts_o == NULL || hash_o == NULL || row == NULL || index_o == NULL ||
            result == NULL) {
            Py_XDECREF(seq_o);
            Py_XDECREF(ts_o);
            Py_XDECREF(hash_o);
            Py_XDECREF(row);
            Py_XDECREF(index_o);
            Py_XDECREF(result);
            status = FAIL;
            goto done;
        }
        /* (seq, id, debit, credit, amount, currency, code, flags, pending_id, timeout_s,
         *  expires_at_ns, reference, metadata, timestamp_ns, hash), as `model.seal` builds. */
        PyTuple_SET_ITEM(row, 0, seq_o);
        PyTuple_SET_ITEM(row, 1, Py_NewRef(it->id));
        PyTuple_SET_ITEM(row, 2, Py_NewRef(it->debit));
        PyTuple_SET_ITEM(row, 3, Py_NewRef(it->credit));
        PyTuple_SET_ITEM(row, 4, Py_NewRef(it->amount));
        PyTuple_SET_ITEM(row, 5, Py_NewRef(it->currency));
        PyTuple_SET_ITEM(row, 6, Py_NewRef(it->code));
        PyTuple_SET_ITEM(row, 7, Py_NewRef(zero));
        PyTuple_SET_ITEM(row, 8, Py_NewRef(zero));
        PyTuple_SET_ITEM(row, 9, Py_NewRef(zero));
        PyTuple_SET_ITEM(row, 10, Py_NewRef(zero));
        PyTuple_SET_ITEM(row, 11, Py_NewRef(empty_str));
        PyTuple_SET_ITEM(row, 12, Py_NewRef(empty_str));
        PyTuple_SET_ITEM(row, 13, Py_NewRef(ts_o));
        PyTuple_SET_ITEM(row, 14, hash_o);
        /* Ints and strs only: no cycle can pass through it. CPython's collector would untrack
         * it at its first pass; untracking now keeps a batch's rows out of every pass. */
        PyObject_GC_UnTrack(row);
        PyList_SET_ITEM(rows, i, row);
        /* TransferResult(i, id, OK, ts): a frozen slotted dataclass, its slots set directly
         * as `model.transfer_results` does through the slot descriptors. */
        SLOT(result, r_index) = index_o;
        SLOT(result, r_id) = Py_NewRef(it->id);
        SLOT(result, r_result) = Py_NewRef(ok_code);
        SLOT(result, r_ts) = ts_o;
        /* Frozen, holding an int, an enum member, an int and an int: no cycle either. */
        PyObject_GC_UnTrack(result);
        PyList_SET_ITEM(results, i, result);
        last_seq = seq_o;
        last_ts = PyTuple_GET_ITEM(row, 13);
        last_hash = hash_o;
    }
    /* Whole groups of `group_rows` rows, flattened: the SQLite multi-row INSERT parameters.
     * Only the columns a plain row varies in (PLAIN_COLUMNS); the INSERT writes the others
     * (flags, pending id, timeout, expiry, reference, metadata) as constants. */
    Py_ssize_t n_groups = s.n / (Py_ssize_t)group_rows;
    groups = PyList_New(n_groups);
    if (groups == NULL) {
        status = FAIL;
        goto done;
    }
    for (Py_ssize_t g = 0; g < n_groups; g++) {
        PyObject *flat = PyList_New((Py_ssize_t)group_rows * N_PLAIN_COLUMNS);
        if (flat == NULL) {
            status = FAIL;
            goto done;
        }
        Py_ssize_t pos = 0;
        for (Py_ssize_t r = g * (Py_ssize_t)group_rows; r < (g + 1) * (Py_ssize_t)group_rows;
             r++) {
            PyObject *row = PyList_GET_ITEM(rows, r);
            for (int f = 0; f < N_PLAIN_COLUMNS; f++)
                PyList_SET_ITEM(flat, pos++, Py_NewRef(PyTuple_GET_ITEM(row, PLAIN_COLUMNS[f])));
        }
        PyList_SET_ITEM(groups, g, flat);
    }
    /* (debits_pending, debits_posted, credits_pending, credits_posted, id) per account, by
     * id: the UPDATEs then walk the accounts' B-tree in order. */
    s.order = PyMem_Calloc((size_t)s.n_accounts + 1, sizeof(IdIndex));
    if (s.order == NULL) {
        PyErr_NoMemory();
        status = FAIL;
        goto done;
    }
    for (Py_ssize_t k = 0; k < s.n_accounts; k++) {
        s.order[k].id = s.accounts[k].id_v;
        s.order[k].index = (int32_t)k;
    }
    qsort(s.order, (size_t)s.n_accounts, sizeof(IdIndex), by_id);
    for (Py_ssize_t k = 0; k < s.n_accounts; k++) {
        Account *a = &s.accounts[s.order[k].index];
        PyObject *t = PyTuple_Pack(5, a->dp, a->new_dpo, a->cp, a->new_cpo, a->id);
        if (t == NULL) {
            status = FAIL;
            goto done;
        }
        PyObject_GC_UnTrack(t);
        PyList_SET_ITEM(balance_rows, k, t);
        PyList_SET_ITEM(touched, k, Py_NewRef(a->id));
    }
    out = PyTuple_Pack(8, rows, groups, balance_rows, touched, results, last_seq, last_ts,
                       last_hash);
    if (out == NULL) {
        status = FAIL;
        goto done;
    }

    /* ---- apply: swap in the new balances (cannot fail), then check double entry ------- */
    for (Py_ssize_t k = 0; k < s.n_accounts; k++) {
        Account *a = &s.accounts[k];
        Py_XSETREF(SLOT(a->balances, b_dpo), Py_NewRef(a->new_dpo));
        Py_XSETREF(SLOT(a->balances, b_cpo), Py_NewRef(a->new_cpo));
    }
    __int128 pending_after[CURRENCIES_MAX], posted_after[CURRENCIES_MAX];
    if (sum_balances(&s, 1, pending_after, posted_after) < 0) {
        Py_CLEAR(out);
        status = FAIL;
        goto done;
    }
    for (int c = 0; c < s.n_currencies; c++) {
        if (pending_after[c] != pending_before[c] || posted_after[c] != posted_before[c]) {
            PyErr_Format(invariant_exc, "compiled batch broke double entry in %U",
                         s.currencies[c]);
            Py_CLEAR(out);
            status = FAIL;
            goto done;
        }
    }
    status = 1;

done:
    Py_XDECREF(rows);
    Py_XDECREF(groups);
    Py_XDECREF(balance_rows);
    Py_XDECREF(touched);
    Py_XDECREF(results);
    state_free(&s);
    if (status == 1) {
        batches_applied++;
        return out;
    }
    Py_XDECREF(out);
    if (status == 2)
        return missing;
    Py_XDECREF(missing);
    if (status == FAIL)
        return NULL;
    batches_declined++;
    Py_RETURN_NONE;
}

static PyObject *
inject_arithmetic_fault(PyObject *self, PyObject *unused)
{
    arithmetic_fault = 1;
    Py_RETURN_NONE;
}

static PyObject *
counters(PyObject *self, PyObject *unused)
{
    return Py_BuildValue("(KK)", batches_applied, batches_declined);
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS,
     "configure(NewTransfer, Balances, TransferResult, ok, is_currency, invariant_error)"},
    {"plan_plain", (PyCFunction)(void (*)(void))plan_plain, METH_FASTCALL,
     "Decide, apply and seal an all-plain, all-ok batch, or return None having changed "
     "nothing."},
    {"counters", counters, METH_NOARGS, "(batches applied, batches declined) so far."},
    {"_inject_arithmetic_fault", inject_arithmetic_fault, METH_NOARGS,
     "Tests only: break the next applied batch's arithmetic by one minor unit."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "paykeep.ledger._fastpath",
    "Compiled core of the ledger's plain-transfer hot path.", -1, methods, NULL, NULL, NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__fastpath(void)
{
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    /* Fetched once: EVP_sha256() would look the implementation up at every digest. */
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
#else
    sha256_md = EVP_sha256();
#endif
    if (sha256_md == NULL) {
        PyErr_SetString(PyExc_ImportError, "OpenSSL has no SHA-256");
        return NULL;
    }
    empty_str = PyUnicode_New(0, 0);
    zero = PyLong_FromLong(0);
    if (empty_str == NULL || zero == NULL)
        return NULL;
    return PyModule_Create(&module);
}
