/* The loops of a shard read that would otherwise hold Python's GIL, compiled. Each has a Python
 * twin that runs where this extension was not built, and tests hold the two to the same answers.
 *
 * scan_headers(buffer), for tarindex.py: follows the header chain of a tar from the first header
 * (each size says where the next header is, so it cannot be vectorised), checks each header as
 * tarindex.py's Python path does (ustar mark, strict octal size and checksum, regular file, no
 * POSIX name prefix) and returns (starts, sizes, names): int64 header positions and member sizes,
 * and each header's 100-byte name field, as bytes. None for anything the member-by-member scanner
 * must judge. It touches one or two cache lines per member, and on a shard just read every one of
 * them is a miss (on a mapped file, a page fault): without the GIL the other threads go on.
 *
 * split_names(names), for tarindex.py: keys and lower-case extensions of the 100-byte name fields,
 * when every name is plain (rules.is_plain_name) and splits at the first dot of its last component,
 * which is what rules.split_key does to such names; None hands the names to the rules themselves
 * (tarindex._split_by_rules). tests/test_rules.py holds the two to the same answers.
 *
 * scan_file(fd, size) walks a file the same way, reading it a few KiB at a time (a header, the
 * small members after it and the next header come in one read), so nothing needs to be mapped.
 *
 * read_ranges_into(fd, offsets, sizes, places, destination, max_gap), for ranges.py: reads the
 * byte range of the file at offsets[i] (sizes[i] long, offsets ascending for speed) into
 * destination at places[i], by preadv calls that each take a run of ranges at most max_gap bytes
 * apart (the bytes between them go to a scratch area). False when the file ends first. Without
 * the GIL, and without a Python object per range.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#define BLOCK 512
#define NAME 100

/* One run of octal digits with spaces or NULs around it, as the Python path's strict reading;
 * `leading_nul` says whether NULs may come before the digits (the size field is cut at its
 * first NUL before it is read, so there they may not). -1 when the field is anything else. */
static int64_t strict_octal(const unsigned char *field, int width, int leading_nul)
{
    int i = 0, digits = 0;
    int64_t value = 0;
    while (i < width && (field[i] == ' ' || (leading_nul && field[i] == 0)))
        i++;
    while (i < width && field[i] >= '0' && field[i] <= '7') {
        value = value * 8 + (field[i] - '0');
        i++;
        digits++;
    }
    while (i < width && (field[i] == ' ' || field[i] == 0))
        i++;
    return (i == width && digits > 0) ? value : -1;
}

static int is_zero_block(const unsigned char *block)
{
    for (int i = 0; i < BLOCK; i++)
        if (block[i])
            return 0;
    return 1;
}

/* 1 when the header at `h` is one the fast path accepts, its member size in *size */
static int plain_header(const unsigned char *h, int64_t *size)
{
    if (memcmp(h + 257, "ustar", 5) != 0)
        return 0; /* old v7 header */
    *size = strict_octal(h + 124, 12, 0);
    if (*size < 0)
        return 0;
    int64_t sum = 8 * ' ';
    for (int i = 0; i < BLOCK; i++)
        if (i < 148 || i >= 156)
            sum += h[i];
    if (strict_octal(h + 148, 8, 1) != sum)
        return 0;
    if (h[156] != '0' && h[156] != 0 && h[156] != '7')
        return 0; /* links, directories, pax and GNU records */
    if (memcmp(h + 257, "ustar\0" "00", 8) == 0 && h[345] != 0)
        return 0; /* a POSIX name prefix */
    return 1;
}

typedef struct {
    int64_t *starts, *sizes;
    unsigned char *names;
    Py_ssize_t count, capacity;
} Chain;

static int grow(Chain *chain)
{
    Py_ssize_t capacity = chain->capacity ? 2 * chain->capacity : 1024;
    int64_t *starts = realloc(chain->starts, capacity * sizeof(int64_t));
    if (starts)
        chain->starts = starts;
    int64_t *sizes = realloc(chain->sizes, capacity * sizeof(int64_t));
    if (sizes)
        chain->sizes = sizes;
    unsigned char *names = realloc(chain->names, capacity * NAME);
    if (names)
        chain->names = names;
    if (!starts || !sizes || !names)
        return 0;
    chain->capacity = capacity;
    return 1;
}

/* Where the walk finds its headers: a buffer in memory, or a file read through a small window */
/* a header, the small members after it and the next header, in one read; a larger window mostly
   copies the start of an image that the walk skips (8 KiB: 18.6 ms for the benchmark's 8 shards,
   4 KiB: 15.9 ms) */
#define WINDOW 4096
typedef struct {
    const unsigned char *data; /* the buffer, or NULL for a file */
    int fd;
    unsigned char *window;
    int64_t window_start, window_length;
} Source;

/* The 512 bytes at `position`, or NULL when the source ends before them */
static const unsigned char *block_at(Source *source, int64_t position, int64_t total)
{
    if (position + BLOCK > total)
        return NULL;
    if (source->data)
        return source->data + position;
    if (position < source->window_start || position + BLOCK > source->window_start + source->window_length) {
        ssize_t got;
        do
            got = pread(source->fd, source->window, WINDOW, position);
        while (got < 0 && errno == EINTR);
        source->window_start = position;
        source->window_length = got < 0 ? 0 : got;
        if (got < BLOCK)
            return NULL; /* a read error, or the file is shorter than it was: the scanner will say */
    }
    return source->window + (position - source->window_start);
}

/* 1: a plain chain; 0: not plain; -1: out of memory */
static int walk(Source *source, int64_t total, Chain *chain)
{
    int64_t position = 0;
    while (position < total) {
        const unsigned char *h = block_at(source, position, total);
        if (!h)
            return 0; /* a header cut short */
        if (h[124] == 0) /* no size: the end-of-archive block, or a header the scanner must judge */
            return is_zero_block(h);
        int64_t size;
        if (!plain_header(h, &size))
            return 0;
        if (chain->count == chain->capacity && !grow(chain))
            return -1;
        chain->starts[chain->count] = position;
        chain->sizes[chain->count] = size;
        memcpy(chain->names + chain->count * NAME, h, NAME);
        chain->count++;
        position += BLOCK + size + (BLOCK - size % BLOCK) % BLOCK;
    }
    return position == total; /* past the end: the last member is cut short */
}

static PyObject *chain_result(int outcome, Chain *chain)
{
    PyObject *result = NULL;
    if (outcome < 0)
        PyErr_NoMemory();
    else if (outcome == 0)
        result = Py_NewRef(Py_None);
    else if (chain->count == 0) /* an empty tar (y# would turn its NULL pointers into None) */
        result = Py_BuildValue("(yyy)", "", "", "");
    else
        result = Py_BuildValue("(y#y#y#)",
                               (const char *)chain->starts, chain->count * (Py_ssize_t)sizeof(int64_t),
                               (const char *)chain->sizes, chain->count * (Py_ssize_t)sizeof(int64_t),
                               (const char *)chain->names, chain->count * (Py_ssize_t)NAME);
    free(chain->starts);
    free(chain->sizes);
    free(chain->names);
    return result;
}

static PyObject *scan_headers(PyObject *module, PyObject *buffer)
{
    Py_buffer view;
    if (PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Chain chain = {NULL, NULL, NULL, 0, 0};
    Source source = {view.buf, -1, NULL, 0, 0};
    int outcome;
    Py_BEGIN_ALLOW_THREADS
    outcome = walk(&source, view.len, &chain);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return chain_result(outcome, &chain);
}

static PyObject *scan_file(PyObject *module, PyObject *args)
{
    int fd;
    long long size;
    if (!PyArg_ParseTuple(args, "iL", &fd, &size))
        return NULL;
    unsigned char *window = malloc(WINDOW);
    if (!window)
        return PyErr_NoMemory();
    Chain chain = {NULL, NULL, NULL, 0, 0};
    Source source = {NULL, fd, window, 0, 0};
    int outcome;
    Py_BEGIN_ALLOW_THREADS
    outcome = walk(&source, size, &chain);
    Py_END_ALLOW_THREADS
    free(window);
    return chain_result(outcome, &chain);
}

/* Splits each name at the first dot of its last path component: keys and lower-case extensions,
 * as Arrow string arrays' offsets and data. None unless every name is plain (rules.is_plain_name:
 * not empty, only [A-Za-z0-9_+./,=@%~-], not absolute, no "./" prefix, no ".." component) and has a last
 * component with a dot that is not its first character; rules.split_key then decides. */
static int name_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || (c && strchr("_-+./,=@%~", c));
}

static PyObject *split_names(PyObject *module, PyObject *buffer)
{
    Py_buffer view;
    if (PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_ssize_t n = view.len / NAME;
    if (n > INT32_MAX / NAME) { /* the offsets are 32-bit (Arrow's string type): numpy decides */
        PyBuffer_Release(&view);
        return Py_NewRef(Py_None);
    }
    const unsigned char *names = view.buf;
    int32_t *key_offsets = malloc((n + 1) * sizeof(int32_t)), *ext_offsets = malloc((n + 1) * sizeof(int32_t));
    char *keys = malloc(n * NAME + 1), *exts = malloc(n * NAME + 1);
    PyObject *result = NULL;
    if (!key_offsets || !ext_offsets || !keys || !exts) {
        PyErr_NoMemory();
        goto done;
    }
    int plain = 1;
    int32_t key_end = 0, ext_end = 0;
    key_offsets[0] = ext_offsets[0] = 0;
    for (Py_ssize_t i = 0; i < n && plain; i++) {
        const unsigned char *name = names + i * NAME;
        int length = 0, last_part = 0, first_dot = -1;
        while (length < NAME && name[length])
            length++;
        if (length == 0 || name[0] == '/' || (length >= 2 && name[0] == '.' && name[1] == '/')) {
            plain = 0;
            break;
        }
        for (int j = 0; j < length; j++) {
            if (!name_char(name[j])) {
                plain = 0;
                break;
            }
            if (name[j] == '/')
                last_part = j + 1;
            /* a ".." component: dots from the start or a slash up to the end or a slash */
            if (name[j] == '.' && j + 1 < length && name[j + 1] == '.' && (j == 0 || name[j - 1] == '/') &&
                (j + 2 == length || name[j + 2] == '/')) {
                plain = 0;
                break;
            }
        }
        if (!plain)
            break;
        for (int j = last_part; j < length; j++)
            if (name[j] == '.') {
                first_dot = j;
                break;
            }
        if (first_dot < 0 || first_dot == last_part) {
            plain = 0;
            break;
        }
        memcpy(keys + key_end, name, first_dot);
        key_offsets[i + 1] = key_end += first_dot;
        for (int j = first_dot + 1; j < length; j++)
            exts[ext_end++] = (name[j] >= 'A' && name[j] <= 'Z') ? (name[j] | 0x20) : name[j];
        ext_offsets[i + 1] = ext_end;
    }
    if (!plain)
        result = Py_NewRef(Py_None);
    else
        result = Py_BuildValue("(y#y#y#y#)", (const char *)key_offsets, (n + 1) * (Py_ssize_t)sizeof(int32_t),
                               keys, (Py_ssize_t)key_end, (const char *)ext_offsets,
                               (n + 1) * (Py_ssize_t)sizeof(int32_t), exts, (Py_ssize_t)ext_end);
done:
    free(key_offsets);
    free(ext_offsets);
    free(keys);
    free(exts);
    PyBuffer_Release(&view);
    return result;
}

#define SCRATCH (256 * 1024) /* the most a call may read in between two ranges */

/* Read the whole of [start, start + total) into the `count` pieces of `iov`, going on after a
 * short read (a single read returns at most about 2 GiB on Linux); 0 when the file ends first. */
static int preadv_all(int fd, struct iovec *iov, int count, int64_t start, int64_t total)
{
    while (total > 0) {
        ssize_t got = preadv(fd, iov, count, start);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return 0;
        start += got;
        total -= got;
        while (count > 0 && (size_t)got >= iov->iov_len) { /* drop the pieces filled */
            got -= iov->iov_len;
            iov++;
            count--;
        }
        if (count > 0) {
            iov->iov_base = (char *)iov->iov_base + got;
            iov->iov_len -= got;
        }
    }
    return 1;
}

static int read_runs(int fd, const int64_t *offsets, const int64_t *sizes, const int64_t *places, Py_ssize_t n,
                     char *destination, int64_t max_gap, struct iovec *iov, int iov_max, char *scratch)
{
    Py_ssize_t i = 0;
    while (i < n) {
        int count = 0;
        int64_t start = offsets[i], end = offsets[i];
        while (i < n && count < iov_max - 1) {
            int64_t gap = offsets[i] - end;
            if (count > 0 && (gap < 0 || gap > max_gap))
                break;
            if (gap > 0) {
                iov[count].iov_base = scratch;
                iov[count++].iov_len = gap;
            }
            iov[count].iov_base = destination + places[i];
            iov[count++].iov_len = sizes[i];
            end = offsets[i] + sizes[i];
            i++;
        }
        if (!preadv_all(fd, iov, count, start, end - start))
            return 0;
    }
    return 1;
}

static PyObject *read_ranges_into(PyObject *module, PyObject *args)
{
    int fd;
    long long max_gap;
    Py_buffer offsets, sizes, places, destination;
    if (!PyArg_ParseTuple(args, "iy*y*y*w*L", &fd, &offsets, &sizes, &places, &destination, &max_gap))
        return NULL;
    PyObject *result = NULL;
    if (max_gap < 0 || max_gap > SCRATCH) {
        PyErr_Format(PyExc_ValueError, "max_gap must be between 0 and %d", SCRATCH);
        goto done;
    }
    Py_ssize_t n = offsets.len / (Py_ssize_t)sizeof(int64_t);
    const int64_t *offset = offsets.buf, *size = sizes.buf, *place = places.buf;
    if (sizes.len != offsets.len || places.len != offsets.len) {
        PyErr_SetString(PyExc_ValueError, "offsets, sizes and places must have the same length");
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (offset[i] < 0 || size[i] < 0 || place[i] < 0 || place[i] > destination.len - size[i]) {
            PyErr_Format(PyExc_ValueError, "range %zd (offset %lld, size %lld, place %lld) is outside its file or the destination",
                         i, (long long)offset[i], (long long)size[i], (long long)place[i]);
            goto done;
        }
    }
    long iov_max = sysconf(_SC_IOV_MAX);
    if (iov_max < 2 || iov_max > 1024)
        iov_max = 1024;
    struct iovec *iov = malloc(iov_max * sizeof(struct iovec));
    char *scratch = malloc(SCRATCH);
    if (!iov || !scratch) {
        free(iov);
        free(scratch);
        PyErr_NoMemory();
        goto done;
    }
    int complete;
    Py_BEGIN_ALLOW_THREADS
    complete = read_runs(fd, offset, size, place, n, destination.buf, max_gap, iov, (int)iov_max, scratch);
    Py_END_ALLOW_THREADS
    free(iov);
    free(scratch);
    result = PyBool_FromLong(complete);
done:
    PyBuffer_Release(&offsets);
    PyBuffer_Release(&sizes);
    PyBuffer_Release(&places);
    PyBuffer_Release(&destination);
    return result;
}

static PyMethodDef methods[] = {
    {"scan_headers", scan_headers, METH_O,
     "scan_headers(buffer) -> (starts, sizes, names) or None: the header chain of a plain tar."},
    {"scan_file", scan_file, METH_VARARGS,
     "scan_file(fd, size) -> (starts, sizes, names) or None: scan_headers over a file, read a few KiB at a time."},
    {"split_names", split_names, METH_O,
     "split_names(names) -> (key offsets, keys, extension offsets, extensions) or None: keys and extensions of plain names."},
    {"read_ranges_into", read_ranges_into, METH_VARARGS,
     "read_ranges_into(fd, offsets, sizes, places, destination, max_gap) -> bool: byte ranges of a file into a buffer."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastio", NULL, 0, methods};

PyMODINIT_FUNC PyInit__fastio(void)
{
    return PyModule_Create(&module);
}
