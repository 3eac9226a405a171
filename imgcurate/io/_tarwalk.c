/* The header walk of a plain tar (tarindex.py), compiled: the one loop of the read that cannot
 * be vectorised, since each header's size says where the next header is.
 *
 * scan_headers(buffer) follows the chain from the first header, checks each header as
 * tarindex.py's Python path does (ustar mark, strict octal size and checksum, regular file,
 * no POSIX name prefix) and returns (starts, sizes, names): int64 header positions and member
 * sizes, and each header's 100-byte name field, as bytes. It returns None for anything the
 * member-by-member scanner must judge. The walk runs without the GIL: it touches one or two
 * cache lines per member, and on a shard just read from disk every one of them is a miss.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

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

/* 1: a plain chain; 0: not plain; -1: out of memory */
static int walk(const unsigned char *data, int64_t total, Chain *chain)
{
    int64_t position = 0;
    while (position < total) {
        if (position + BLOCK > total)
            return 0; /* a header cut short */
        const unsigned char *h = data + position;
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

static PyObject *scan_headers(PyObject *module, PyObject *buffer)
{
    Py_buffer view;
    if (PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Chain chain = {NULL, NULL, NULL, 0, 0};
    int outcome;
    Py_BEGIN_ALLOW_THREADS
    outcome = walk(view.buf, view.len, &chain);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    PyObject *result = NULL;
    if (outcome < 0)
        PyErr_NoMemory();
    else if (outcome == 0)
        result = Py_NewRef(Py_None);
    else if (chain.count == 0) /* an empty tar (y# would turn its NULL pointers into None) */
        result = Py_BuildValue("(yyy)", "", "", "");
    else
        result = Py_BuildValue("(y#y#y#)",
                               (const char *)chain.starts, chain.count * (Py_ssize_t)sizeof(int64_t),
                               (const char *)chain.sizes, chain.count * (Py_ssize_t)sizeof(int64_t),
                               (const char *)chain.names, chain.count * (Py_ssize_t)NAME);
    free(chain.starts);
    free(chain.sizes);
    free(chain.names);
    return result;
}

static PyMethodDef methods[] = {
    {"scan_headers", scan_headers, METH_O,
     "scan_headers(buffer) -> (starts, sizes, names) or None: the header chain of a plain tar."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_tarwalk", NULL, 0, methods};

PyMODINIT_FUNC PyInit__tarwalk(void)
{
    return PyModule_Create(&module);
}
