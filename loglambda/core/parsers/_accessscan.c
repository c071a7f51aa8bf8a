/* Native scanner for Apache/nginx access logs: combined, common and vcombined.
 *
 * Two passes over a block of complete lines. The first finds the lines and parses
 * each one in the well-formed shape (nearly every line of a real log) into
 * fixed-width columns, plus the offsets and source positions of its text fields. The
 * second copies each text column's bytes, back to back, into one buffer. Python wraps
 * all of these as Arrow arrays without a copy. The shape is:
 *   - printable ASCII;
 *   - the format's exact token layout, single spaces;
 *   - a canonical timestamp;
 *   - a valid status, size and request time.
 * Every other line is reported as "slow" and the Python reference parser
 * (access.py) decides its fate, so an odd line never gets an answer from here that
 * differs from the reference. tests/unit/test_access_fast.py holds the two to that.
 *
 * The GIL is released for the whole scan, so import's parser threads use every core.
 *
 * Positions follow lines.py: a line ends at '\n' (not included). A trailing '\r' is
 * not part of the fields. The last line of a block may lack its newline. Slow lines
 * are reported as (line index, start, end), with end just before the '\n'.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__) && defined(__x86_64__)
#include <emmintrin.h>
#endif

enum { FMT_COMBINED = 0, FMT_COMMON = 1, FMT_VCOMBINED = 2 };

/* String columns, in the order access_fast.py expects them. */
enum {
    S_HOST,
    S_CLIENT_IP,
    S_METHOD,
    S_PATH,
    S_QUERY,
    S_PROTOCOL,
    S_REFERRER,
    S_USER_AGENT,
    N_STR
};

typedef struct {
    const char *p;
    Py_ssize_t n;
    int valid; /* 0: null */
} field_t;

typedef struct {
    field_t s[N_STR];
    int64_t ts;
    int64_t nbytes;
    int status;
    double latency;
    int has_latency;
} row_t;

/* The last timestamp text and its value: consecutive lines mostly share a second. */
typedef struct {
    char text[26];
    int64_t us;
    int valid;
} ts_cache_t;

static int is_digit(char c) { return c >= '0' && c <= '9'; }
static int is_alpha(char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }

static int digits(const char *p, int n, int *out) {
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!is_digit(p[i])) return 0;
        v = v * 10 + (p[i] - '0');
    }
    *out = v;
    return 1;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm). */
static int64_t days_from_civil(int64_t y, int m, int d) {
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const int64_t yoe = y - era * 400;
    const int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    const int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int days_in_month(int y, int m) {
    static const int dim[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0)) return 29;
    return dim[m - 1];
}

/* 1..12 for "Jan".."Dec" (case as written), else 0. A switch on the three bytes,
 * not a memcmp per month: most lines parse a timestamp, and it was 1.5% of import. */
#define M3(a, b, c) ((uint32_t)(a) << 16 | (uint32_t)(b) << 8 | (uint32_t)(c))
static int month_of(const char *p) {
    switch (M3((uint8_t)p[0], (uint8_t)p[1], (uint8_t)p[2])) {
    case M3('J', 'a', 'n'): return 1;
    case M3('F', 'e', 'b'): return 2;
    case M3('M', 'a', 'r'): return 3;
    case M3('A', 'p', 'r'): return 4;
    case M3('M', 'a', 'y'): return 5;
    case M3('J', 'u', 'n'): return 6;
    case M3('J', 'u', 'l'): return 7;
    case M3('A', 'u', 'g'): return 8;
    case M3('S', 'e', 'p'): return 9;
    case M3('O', 'c', 't'): return 10;
    case M3('N', 'o', 'v'): return 11;
    case M3('D', 'e', 'c'): return 12;
    default: return 0;
    }
}

/* "10/Oct/2000:13:55:36 -0700" (exactly 26 bytes) to UTC microseconds. Only the
 * canonical form with in-range parts is accepted; strptime's leniencies (one-digit
 * days, "october", Feb 30 rolling over) are the reference parser's business. */
static int parse_time(const char *p, int64_t *out) {
    int day, year, hour, minute, second, tzh, tzm, month = month_of(p + 3);
    if (p[2] != '/' || p[6] != '/' || p[11] != ':' || p[14] != ':' || p[17] != ':' ||
        p[20] != ' ' || (p[21] != '+' && p[21] != '-'))
        return 0;
    if (!digits(p, 2, &day) || !digits(p + 7, 4, &year) || !digits(p + 12, 2, &hour) ||
        !digits(p + 15, 2, &minute) || !digits(p + 18, 2, &second) ||
        !digits(p + 22, 2, &tzh) || !digits(p + 24, 2, &tzm))
        return 0;
    if (month == 0 || year < 1900 || day < 1 || day > days_in_month(year, month) ||
        hour > 23 || minute > 59 || second > 59 || tzh > 14 || tzm > 59)
        return 0;
    int64_t secs = days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 +
                   second;
    int64_t tz = (int64_t)tzh * 3600 + tzm * 60;
    secs += p[21] == '+' ? -tz : tz;
    *out = secs * 1000000;
    return 1;
}

/* The 26 bytes of two timestamps equal? Fixed-size loads, not a memcmp call. */
static int same_time(const char *a, const char *b) {
    uint64_t x[3], y[3];
    uint16_t u, v;
    memcpy(x, a, 24);
    memcpy(y, b, 24);
    memcpy(&u, a + 24, 2);
    memcpy(&v, b + 24, 2);
    return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (uint64_t)(u ^ v)) == 0;
}

/* Copy a field's text. Most are short, and a libc call per field costs more than the
 * copy, so short ones move as one or two 16-byte blocks. That reads past the field
 * (never past the block, ``src_end``) and writes up to COPY_SLACK bytes past it: into
 * the place of the column's next field, written later, or into the gap after the
 * column's region (access_fast.py leaves COPY_SLACK between regions). */
#define COPY_SLACK 32
static void copy_field(uint8_t *dst, const char *src, size_t n, const char *src_end) {
    if (n <= 16 && src + 16 <= src_end) {
        memcpy(dst, src, 16);
    } else if (n <= 32 && src + 32 <= src_end) {
        memcpy(dst, src, 32);
    } else {
        memcpy(dst, src, n);
    }
}

/* An unquoted token: one or more bytes up to a space or the end. A quote inside
 * makes the line slow (the reference regex would read it differently). */
static int token(const char **pp, const char *end, field_t *f) {
    const char *p = *pp, *s = p;
    while (p < end && *p != ' ') {
        if (*p == '"') return 0;
        p++;
    }
    if (p == s) return 0;
    f->p = s;
    f->n = p - s;
    f->valid = 1;
    *pp = p;
    return 1;
}

/* '"' text '"', as the reference regex "(?:[^"\\]|\\.)*" reads it: a backslash
 * takes the next byte with it, so only an unescaped quote ends the text. The text is
 * kept as written (nginx's \x22 stays four characters). */
static int quoted(const char **pp, const char *end, field_t *f, int escapes) {
    const char *p = *pp;
    if (p >= end || *p != '"') return 0;
    const char *s = ++p;
    for (;;) {
        const char *q = memchr(p, '"', (size_t)(end - p));
        if (q == NULL) return 0;
        const char *b = escapes ? memchr(p, '\\', (size_t)(q - p)) : NULL;
        if (b == NULL) {
            p = q;
            break;
        }
        p = b + 2; /* the escaped byte, whatever it is */
        if (p > end) return 0;
    }
    f->p = s;
    f->n = p - s;
    f->valid = 1;
    *pp = p + 1;
    return 1;
}

static int expect(const char **pp, const char *end, char c) {
    if (*pp < end && **pp == c) {
        (*pp)++;
        return 1;
    }
    return 0;
}

/* "METHOD target PROTO" into method/path/query/protocol, as access.py's _REQUEST and
 * _TARGET regexes do. A request of another shape is kept whole as the path. */
static void split_request(const field_t *req, row_t *r) {
    const char *p = req->p;
    Py_ssize_t n = req->n, i = 0, j, k, m;
    const char *target = p;
    Py_ssize_t target_n = n;
    r->s[S_METHOD].valid = 0;
    r->s[S_PROTOCOL].valid = 0;
    while (i < n && is_alpha(p[i])) i++;
    if (i > 0 && i < n && p[i] == ' ') {
        const char *sp = memchr(p + i + 1, ' ', (size_t)(n - i - 1));
        j = sp ? sp - p : n;
        int ok = j > i + 1;
        if (ok && j < n) { /* " PROTO" must follow, to the end */
            k = j + 1;
            while (k < n && is_alpha(p[k])) k++;
            ok = k > j + 1 && k < n && p[k] == '/';
            if (ok) {
                m = ++k;
                while (k < n && (is_digit(p[k]) || p[k] == '.')) k++;
                ok = k > m && k == n;
            }
            if (ok) r->s[S_PROTOCOL] = (field_t){p + j + 1, n - j - 1, 1};
        }
        if (ok) {
            r->s[S_METHOD] = (field_t){p, i, 1};
            target = p + i + 1;
            target_n = j - i - 1;
        }
    }
    const char *q = memchr(target, '?', (size_t)target_n);
    if (q == NULL) {
        r->s[S_PATH] = (field_t){target, target_n, 1};
        r->s[S_QUERY].valid = 0;
    } else {
        r->s[S_PATH] = (field_t){target, q - target, 1};
        r->s[S_QUERY] = (field_t){q + 1, target + target_n - q - 1, 1};
    }
}

/* nginx $request_time (seconds with a point) or Apache %D (integer microseconds), in
 * milliseconds. Negative or other shapes are slow: the reference quarantines them. */
static int parse_request_time(const field_t *f, double *ms) {
    const char *p = f->p;
    Py_ssize_t n = f->n, i = 0;
    char buf[64];
    while (i < n && is_digit(p[i])) i++;
    if (i == n) {
        if (n > 15) return 0;
        int64_t v = 0;
        for (i = 0; i < n; i++) v = v * 10 + (p[i] - '0');
        *ms = (double)v / 1000.0;
        return 1;
    }
    if (i == 0 || p[i] != '.' || i + 1 == n || n >= (Py_ssize_t)sizeof buf) return 0;
    int64_t mantissa = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        if (k == i) continue;
        if (!is_digit(p[k])) return 0;
        if (n <= 16) mantissa = mantissa * 10 + (p[k] - '0');
    }
    Py_ssize_t decimals = n - i - 1;
    if (n <= 16 && decimals <= 22) {
        /* Clinger's fast path: both operands are exact doubles (at most 15 digits,
         * 10^22 at most), so the one division rounds correctly, as strtod would. */
        static const double pow10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                       1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                       1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
        *ms = (double)mantissa / pow10[decimals] * 1000.0;
        return 1;
    }
    memcpy(buf, p, (size_t)n);
    buf[n] = '\0';
    /* glibc strtod rounds correctly, as Arrow's cast does; LC_NUMERIC stays "C" in
     * Python, so the decimal point is '.'. */
    *ms = strtod(buf, NULL) * 1000.0;
    return 1;
}

/* Whether [s, end) is all printable ASCII (0x20..0x7e); *escapes says whether it has
 * a backslash. Every byte of every line passes here, so 16 at a time where SSE2 is. */
static int printable_ascii(const char *s, const char *end, int *escapes) {
    const char *q = s;
    int bad = 0, esc = 0;
#if defined(__SSE2__) && defined(__x86_64__)
    const __m128i space = _mm_set1_epi8(0x20), del = _mm_set1_epi8(0x7f),
                  backslash = _mm_set1_epi8('\\');
    __m128i bad_v = _mm_setzero_si128(), esc_v = _mm_setzero_si128();
    for (; end - q >= 16; q += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)q);
        /* Signed compare: bytes >= 0x80 are negative, so below 0x20 too. */
        bad_v = _mm_or_si128(bad_v, _mm_or_si128(_mm_cmplt_epi8(v, space), _mm_cmpeq_epi8(v, del)));
        esc_v = _mm_or_si128(esc_v, _mm_cmpeq_epi8(v, backslash));
    }
    bad = _mm_movemask_epi8(bad_v) != 0;
    esc = _mm_movemask_epi8(esc_v) != 0;
#endif
    for (; q < end; q++) {
        int8_t c = (int8_t)*q; /* bytes >= 0x80 are negative here */
        bad |= (c < 0x20) | (c == 0x7f);
        esc |= c == '\\';
    }
    *escapes = esc;
    return !bad;
}

/* Parse one line (without '\n' and '\r'); 1 if every field is in the fast shape. */
static int parse_line(const char *s, const char *end, int fmt, row_t *r, ts_cache_t *tc) {
    /* Printable ASCII only: UTF-8 and control bytes are the reference's to judge.
     * (nginx and Apache escape everything else as \xHH, so real logs rarely have any.) */
    int escapes;
    if (!printable_ascii(s, end, &escapes)) return 0;

    const char *p = s;
    field_t ignored, time_f, req, status_f, bytes_f, rt;
    r->s[S_HOST].valid = 0;
    if (fmt == FMT_VCOMBINED) {
        field_t vhost;
        if (!token(&p, end, &vhost) || !expect(&p, end, ' ')) return 0;
        const char *colon = memchr(vhost.p, ':', (size_t)vhost.n);
        Py_ssize_t host_n = colon ? colon - vhost.p : vhost.n;
        if (host_n == 0) return 0;
        if (colon) { /* ":port", digits only */
            const char *q = colon + 1, *qe = vhost.p + vhost.n;
            if (q == qe) return 0;
            for (; q < qe; q++)
                if (!is_digit(*q)) return 0;
        }
        /* "-" means no virtual host, as in access.py's text("host", "", "-"). */
        int dash = host_n == 1 && vhost.p[0] == '-';
        r->s[S_HOST] = (field_t){vhost.p, host_n, !dash};
    }
    if (!token(&p, end, &r->s[S_CLIENT_IP]) || !expect(&p, end, ' ')) return 0;
    if (!token(&p, end, &ignored) || !expect(&p, end, ' ')) return 0; /* ident */
    if (!token(&p, end, &ignored) || !expect(&p, end, ' ')) return 0; /* user */
    if (end - p < 29 || p[0] != '[' || p[27] != ']' || p[28] != ' ') return 0;
    time_f.p = p + 1;
    p += 29;
    if (!quoted(&p, end, &req, escapes) || !expect(&p, end, ' ')) return 0;
    if (!token(&p, end, &status_f) || !expect(&p, end, ' ')) return 0;
    if (!token(&p, end, &bytes_f)) return 0;
    r->s[S_REFERRER].valid = 0;
    r->s[S_USER_AGENT].valid = 0;
    if (fmt != FMT_COMMON) {
        if (!expect(&p, end, ' ') || !quoted(&p, end, &r->s[S_REFERRER], escapes)) return 0;
        if (!expect(&p, end, ' ') || !quoted(&p, end, &r->s[S_USER_AGENT], escapes)) return 0;
        field_t *ref = &r->s[S_REFERRER];
        if (ref->n == 0 || (ref->n == 1 && ref->p[0] == '-')) ref->valid = 0;
        if (r->s[S_USER_AGENT].n == 0) r->s[S_USER_AGENT].valid = 0;
    }
    r->has_latency = 0;
    if (p < end) {
        if (!expect(&p, end, ' ') || !token(&p, end, &rt) || p != end) return 0;
        if (!parse_request_time(&rt, &r->latency)) return 0;
        r->has_latency = 1;
    }

    if (tc->valid && same_time(tc->text, time_f.p)) {
        r->ts = tc->us;
    } else {
        if (!parse_time(time_f.p, &r->ts)) return 0;
        memcpy(tc->text, time_f.p, 26);
        tc->us = r->ts;
        tc->valid = 1;
    }
    int status;
    if (status_f.n != 3 || !digits(status_f.p, 3, &status) || status < 100 || status > 599)
        return 0;
    r->status = status;
    if (bytes_f.n == 1 && bytes_f.p[0] == '-') {
        r->nbytes = 0;
    } else {
        if (bytes_f.n > 18) return 0;
        int64_t v = 0;
        for (Py_ssize_t i = 0; i < bytes_f.n; i++) {
            if (!is_digit(bytes_f.p[i])) return 0;
            v = v * 10 + (bytes_f.p[i] - '0');
        }
        r->nbytes = v;
    }
    r->s[S_CLIENT_IP].valid = 1;
    split_request(&req, r);
    return 1;
}

typedef struct {
    Py_buffer rows, starts, ts, status, nbytes, latency, lat_valid, offsets, valid, strdata,
        spans, slow;
} outputs_t;

/* Each output must be a writable buffer of at least its row capacity. */
static int check_size(Py_buffer *b, const char *name, Py_ssize_t need) {
    if (b->len < need) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes, need %zd", name, b->len, need);
        return 0;
    }
    return 1;
}

static PyObject *scan(PyObject *self, PyObject *args) {
    Py_buffer data;
    int fmt;
    Py_ssize_t max_line, cap;
    outputs_t o;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*inn" "w*w*w*w*w*w*w*w*w*w*w*w*", &data, &fmt, &max_line, &cap,
                          &o.rows, &o.starts, &o.ts, &o.status, &o.nbytes, &o.latency,
                          &o.lat_valid, &o.offsets, &o.valid, &o.strdata, &o.spans,
                          &o.slow))
        return NULL;
    Py_buffer *all[] = {&data,     &o.rows,      &o.starts,  &o.ts,    &o.status,
                        &o.nbytes, &o.latency,   &o.lat_valid, &o.offsets, &o.valid,
                        &o.strdata, &o.spans, &o.slow};
    const Py_ssize_t len = data.len;
    PyObject *result = NULL;
    if (fmt < FMT_COMBINED || fmt > FMT_VCOMBINED) {
        PyErr_Format(PyExc_ValueError, "unknown format code %d", fmt);
        goto done;
    }
    if (len > INT32_MAX) { /* Arrow string offsets are int32 */
        PyErr_SetString(PyExc_ValueError, "block over 2 GiB");
        goto done;
    }
    if (!check_size(&o.rows, "rows", cap * 8) || !check_size(&o.starts, "starts", cap * 8) ||
        !check_size(&o.ts, "ts", cap * 8) || !check_size(&o.status, "status", cap * 2) ||
        !check_size(&o.nbytes, "nbytes", cap * 8) ||
        !check_size(&o.latency, "latency", cap * 8) ||
        !check_size(&o.lat_valid, "lat_valid", cap) ||
        !check_size(&o.offsets, "offsets", N_STR * (cap + 1) * 4) ||
        !check_size(&o.valid, "valid", N_STR * cap) ||
        !check_size(&o.strdata, "strdata", len + N_STR * COPY_SLACK) ||
        !check_size(&o.spans, "spans", N_STR * cap * 4) ||
        !check_size(&o.slow, "slow", cap * 3 * 8))
        goto done;

    const char *buf = data.buf;
    int64_t *rows = o.rows.buf, *starts = o.starts.buf, *ts = o.ts.buf, *nbytes = o.nbytes.buf;
    int64_t *slow = o.slow.buf;
    int16_t *status = o.status.buf;
    double *latency = o.latency.buf;
    uint8_t *lat_valid = o.lat_valid.buf, *valid = o.valid.buf, *strdata = o.strdata.buf;
    int32_t *offsets = o.offsets.buf, *spans = o.spans.buf;
    Py_ssize_t pos = 0, line = 0, nfast = 0, nslow = 0, overflow = 0;
    int32_t used[N_STR] = {0};
    for (int k = 0; k < N_STR; k++) offsets[k * (cap + 1)] = 0;

    Py_BEGIN_ALLOW_THREADS
    ts_cache_t tc = {{0}, 0, 0};
    row_t r;
    while (pos < len) {
        if (line == cap) {
            overflow = 1;
            break;
        }
        const char *s = buf + pos;
        const char *nl = memchr(s, '\n', (size_t)(len - pos));
        Py_ssize_t e = nl ? nl - buf : len;
        Py_ssize_t ce = (e > pos && buf[e - 1] == '\r') ? e - 1 : e;
        if (ce > pos && ce - pos <= max_line && parse_line(s, buf + ce, fmt, &r, &tc)) {
            rows[nfast] = line;
            starts[nfast] = pos;
            ts[nfast] = r.ts;
            status[nfast] = (int16_t)r.status;
            nbytes[nfast] = r.nbytes;
            latency[nfast] = r.has_latency ? r.latency : 0.0;
            lat_valid[nfast] = (uint8_t)r.has_latency;
            for (int k = 0; k < N_STR; k++) {
                const field_t *f = &r.s[k];
                if (f->valid) {
                    spans[k * cap + nfast] = (int32_t)(f->p - buf);
                    used[k] += (int32_t)f->n;
                }
                valid[k * cap + nfast] = (uint8_t)f->valid;
                offsets[k * (cap + 1) + nfast + 1] = used[k];
            }
            nfast++;
        } else {
            slow[3 * nslow] = line;
            slow[3 * nslow + 1] = pos;
            slow[3 * nslow + 2] = e;
            nslow++;
        }
        line++;
        pos = nl ? e + 1 : len;
    }
    /* Second pass: each column's text, back to back in strdata, COPY_SLACK apart. Row
     * by row, so the block is read once more in order while it is still in cache. */
    uint8_t *to[N_STR];
    Py_ssize_t region = 0;
    for (int k = 0; k < N_STR; k++) {
        to[k] = strdata + region;
        region += used[k] + COPY_SLACK;
    }
    for (Py_ssize_t i = 0; i < nfast && !overflow; i++) {
        for (int k = 0; k < N_STR; k++) {
            const int32_t *off = offsets + k * (cap + 1);
            int32_t n = off[i + 1] - off[i];
            if (n) copy_field(to[k] + off[i], buf + spans[k * cap + i], (size_t)n, buf + len);
        }
    }
    Py_END_ALLOW_THREADS

    if (overflow) {
        PyErr_Format(PyExc_ValueError, "block has more than %zd lines", cap);
        goto done;
    }
    result = Py_BuildValue("nnn", line, nfast, nslow);
done:
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) PyBuffer_Release(all[i]);
    return result;
}

/* Occurrences of byte c in p[0..n). */
static Py_ssize_t count_byte(const uint8_t *p, Py_ssize_t n, uint8_t c) {
    Py_ssize_t count = 0, i = 0;
#if defined(__SSE2__) && defined(__x86_64__)
    const __m128i needle = _mm_set1_epi8((char)c), zero = _mm_setzero_si128();
    while (n - i >= 16) {
        /* Each byte lane counts its hits (a hit compares as -1) for at most 255
         * rounds, then the lanes are summed into the total before they can wrap. */
        Py_ssize_t rounds = (n - i) / 16;
        if (rounds > 255) rounds = 255;
        __m128i lanes = zero;
        for (Py_ssize_t r = 0; r < rounds; r++, i += 16) {
            __m128i v = _mm_loadu_si128((const __m128i *)(p + i));
            lanes = _mm_sub_epi8(lanes, _mm_cmpeq_epi8(v, needle));
        }
        __m128i sums = _mm_sad_epu8(lanes, zero);
        count += _mm_cvtsi128_si64(sums) + _mm_cvtsi128_si64(_mm_unpackhi_epi64(sums, sums));
    }
#endif
    for (; i < n; i++) count += p[i] == c;
    return count;
}

static PyObject *count(PyObject *self, PyObject *args) {
    Py_buffer data;
    int c;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*i", &data, &c)) return NULL;
    if (c < 0 || c > 255) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "byte must be in 0..255");
        return NULL;
    }
    Py_ssize_t n;
    Py_BEGIN_ALLOW_THREADS
    n = count_byte(data.buf, data.len, (uint8_t)c);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    return PyLong_FromSsize_t(n);
}

static PyMethodDef methods[] = {
    {"count", count, METH_VARARGS,
     "count(data, byte) -> int\n\nHow many times byte occurs in data (a bytes-like object)."},
    {"scan", scan, METH_VARARGS,
     "scan(data, fmt, max_line_bytes, cap, rows, starts, ts, status, nbytes, latency, "
     "lat_valid, offsets, valid, strdata, spans, slow) -> (lines, fast, slow)\n\n"
     "Parse the well-formed lines of a block into the output buffers; see access_fast.py."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_accessscan", "Native access-log scanner (see access_fast.py).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__accessscan(void) {
    PyObject *m = PyModule_Create(&module);
    /* The layout access_fast.py must allocate for. */
    if (m != NULL && (PyModule_AddIntConstant(m, "N_STR", N_STR) < 0 ||
                      PyModule_AddIntConstant(m, "COPY_SLACK", COPY_SLACK) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
