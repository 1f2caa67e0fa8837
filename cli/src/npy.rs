//! Reading and writing NumPy `.npy` files.
//!
//! The tool reads stacks of matrices `(N, m, n)` in C or Fortran order as
//! float64/float32 (data) or uint8/bool (masks), and writes float64 C-order
//! arrays. That subset of the format is small: a magic string, a version, a
//! header that is a Python dict literal with the keys `descr`,
//! `fortran_order` and `shape`, then the raw elements. A dedicated reader
//! keeps the tool's dependency tree small (a general `.npy` crate brings a
//! full Python-literal parser) and lets every failure name the file and say
//! what to change (`use X.astype(np.float64)`, `add a leading axis`, ...).
//!
//! Robustness: the header length is bounded, the element count is checked for
//! overflow and against the file's real size before any buffer is sized by
//! it, so a corrupt or hostile file gives an error, never a huge allocation.

use crate::error::CliError;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::Path;

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// Headers larger than this are refused: NumPy's are below 200 bytes, so a
/// larger one means a corrupt file (or an unsupported structured dtype).
const MAX_HEADER: usize = 1 << 20;

/// The element types the tool understands.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Dtype {
    F64,
    F32,
    U8,
    Bool,
}

impl Dtype {
    fn size(self) -> usize {
        match self {
            Dtype::F64 => 8,
            Dtype::F32 => 4,
            Dtype::U8 | Dtype::Bool => 1,
        }
    }
    /// NumPy's name of the type, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F64 => "float64",
            Dtype::F32 => "float32",
            Dtype::U8 => "uint8",
            Dtype::Bool => "bool",
        }
    }
}

/// The parsed header of a `.npy` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub dtype: Dtype,
    /// True for big-endian multi-byte elements.
    pub big_endian: bool,
    pub fortran_order: bool,
    pub shape: Vec<usize>,
}

/// A stack of `count` matrices of `rows x cols` in the order the file stored
/// them: C order (`(i * rows + r) * cols + c`) or Fortran order
/// (`i + count * (r + rows * c)`). Keeping the file's order lets the library
/// read Fortran data through strides instead of a transposed copy.
#[derive(Clone, Debug)]
pub struct Stack<T> {
    pub data: Vec<T>,
    pub count: usize,
    pub rows: usize,
    pub cols: usize,
    pub fortran_order: bool,
}

impl<T> Stack<T> {
    /// The library layout describing this storage order.
    pub fn layout(&self) -> coreflow::Layout {
        if self.fortran_order {
            let n = self.count as isize;
            coreflow::Layout {
                count: self.count,
                rows: self.rows,
                cols: self.cols,
                sample_stride: 1,
                row_stride: n,
                col_stride: n * self.rows as isize,
            }
        } else {
            coreflow::Layout::c_order(self.count, self.rows, self.cols)
        }
    }
    /// Index in `data` of entry `(r, c)` of matrix `i`.
    pub fn index(&self, i: usize, r: usize, c: usize) -> usize {
        if self.fortran_order {
            i + self.count * (r + self.rows * c)
        } else {
            (i * self.rows + r) * self.cols + c
        }
    }
    pub fn shape_str(&self) -> String {
        format!("({}, {}, {})", self.count, self.rows, self.cols)
    }
}

impl Stack<f64> {
    /// A read-only view for the library (no copy for either order).
    pub fn batch(&self) -> Result<coreflow::MatrixBatch<'_>, CliError> {
        coreflow::MatrixBatch::new(&self.data, 0, self.layout())
            .map_err(|e| CliError::internal(format!("batch view: {}", e.message())))
    }
}

impl Stack<u8> {
    /// The mask re-ordered to `other`'s storage order, so that it shares the
    /// data's layout (the library requires that).
    pub fn in_order_of<T>(self, other: &Stack<T>) -> Stack<u8> {
        if self.fortran_order == other.fortran_order {
            return self;
        }
        let mut out = Stack {
            data: vec![0u8; self.data.len()],
            count: self.count,
            rows: self.rows,
            cols: self.cols,
            fortran_order: other.fortran_order,
        };
        for i in 0..self.count {
            for r in 0..self.rows {
                for c in 0..self.cols {
                    let k = out.index(i, r, c);
                    out.data[k] = self.data[self.index(i, r, c)];
                }
            }
        }
        out
    }
}

fn bad(path: &Path, what: impl std::fmt::Display) -> CliError {
    CliError::input(format!("{}: {what}", path.display()))
}

fn open(path: &Path) -> Result<(BufReader<File>, u64), CliError> {
    let file = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => bad(path, "no such file"),
        _ => bad(path, format_args!("cannot open: {e}")),
    })?;
    let meta = file
        .metadata()
        .map_err(|e| bad(path, format_args!("cannot read: {e}")))?;
    if meta.is_dir() {
        return Err(bad(path, "is a directory, not a .npy file"));
    }
    Ok((BufReader::with_capacity(1 << 16, file), meta.len()))
}

/// Reads the header; returns it and its total length in bytes (where the
/// data start).
pub fn read_header(r: &mut impl Read, path: &Path) -> Result<(Header, u64), CliError> {
    let mut pre = [0u8; 8];
    r.read_exact(&mut pre)
        .map_err(|_| bad(path, "not a .npy file (shorter than the format's preamble)"))?;
    if &pre[..6] != MAGIC {
        return Err(bad(
            path,
            "not a .npy file (no \\x93NUMPY magic); save arrays with numpy.save",
        ));
    }
    let major = pre[6];
    let (len, pre_len) = match major {
        1 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b)
                .map_err(|_| bad(path, "truncated .npy header"))?;
            (u16::from_le_bytes(b) as usize, 10)
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b)
                .map_err(|_| bad(path, "truncated .npy header"))?;
            (u32::from_le_bytes(b) as usize, 12)
        }
        v => {
            return Err(bad(
                path,
                format_args!(".npy format version {v}.x is not supported (1.0-3.0 are)"),
            ))
        }
    };
    if len > MAX_HEADER {
        return Err(bad(
            path,
            format_args!("the .npy header claims {len} bytes; the file is corrupt"),
        ));
    }
    let mut text = vec![0u8; len];
    r.read_exact(&mut text)
        .map_err(|_| bad(path, "truncated .npy header"))?;
    let text = String::from_utf8(text).map_err(|_| bad(path, "the .npy header is not text"))?;
    let header = parse_header(&text).map_err(|m| bad(path, m))?;
    Ok((header, (pre_len + len) as u64))
}

/// Parses the header dict, e.g.
/// `{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4, 5), }`.
pub fn parse_header(text: &str) -> Result<Header, String> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    p.expect(b'{')?;
    loop {
        p.ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string()?;
        p.ws();
        p.expect(b':')?;
        p.ws();
        match key.as_str() {
            "descr" => {
                if p.peek() != Some(b'\'') && p.peek() != Some(b'"') {
                    return Err(
                        "structured dtypes are not supported: save a plain float64 array".into(),
                    );
                }
                descr = Some(p.string()?)
            }
            "fortran_order" => fortran = Some(p.boolean()?),
            "shape" => shape = Some(p.tuple()?),
            other => return Err(format!("unexpected key {other:?} in the .npy header")),
        }
        p.ws();
        if !p.eat(b',') {
            p.ws();
            p.expect(b'}')?;
            break;
        }
    }
    let descr = descr.ok_or("the .npy header has no 'descr'")?;
    let fortran_order = fortran.ok_or("the .npy header has no 'fortran_order'")?;
    let shape = shape.ok_or("the .npy header has no 'shape'")?;
    let (dtype, big_endian) = parse_descr(&descr)?;
    Ok(Header {
        dtype,
        big_endian,
        fortran_order,
        shape,
    })
}

fn parse_descr(descr: &str) -> Result<(Dtype, bool), String> {
    let (order, code) = match descr.as_bytes().first() {
        Some(b'<' | b'>' | b'|' | b'=') => (descr.as_bytes()[0], &descr[1..]),
        _ => (b'=', descr),
    };
    // `=` is native order; every platform this tool targets is little-endian.
    let big = order == b'>';
    let t = match code {
        "f8" => Dtype::F64,
        "f4" => Dtype::F32,
        "u1" => Dtype::U8,
        "b1" => Dtype::Bool,
        _ => {
            return Err(format!(
                "dtype {descr:?} ({}) is not supported: data must be float64 or float32, masks uint8 or bool",
                numpy_name(code)
            ))
        }
    };
    Ok((t, big))
}

/// A readable name for a dtype code in messages.
fn numpy_name(code: &str) -> String {
    let kind = match code.as_bytes().first() {
        Some(b'i') => "int",
        Some(b'u') => "uint",
        Some(b'f') => "float",
        Some(b'c') => "complex",
        Some(b'b') => return "bool".into(),
        Some(b'U') => return "unicode string".into(),
        Some(b'S') => return "byte string".into(),
        Some(b'O') => return "Python objects".into(),
        _ => return "unknown".into(),
    };
    match code[1..].parse::<u32>() {
        Ok(bytes) if kind == "complex" => format!("complex{}", bytes * 8),
        Ok(bytes) => format!("{kind}{}", bytes * 8),
        Err(_) => kind.into(),
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!(
                "malformed .npy header: expected '{}' at byte {}",
                c as char, self.i
            ))
        }
    }
    fn string(&mut self) -> Result<String, String> {
        let q = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => {
                return Err(format!(
                    "malformed .npy header: expected a string at byte {}",
                    self.i
                ))
            }
        };
        self.i += 1;
        let start = self.i;
        while let Some(c) = self.peek() {
            if c == q {
                let v = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                self.i += 1;
                return Ok(v);
            }
            self.i += 1;
        }
        Err("malformed .npy header: unterminated string".into())
    }
    fn boolean(&mut self) -> Result<bool, String> {
        for (word, v) in [("True", true), ("False", false)] {
            if self.s[self.i..].starts_with(word.as_bytes()) {
                self.i += word.len();
                return Ok(v);
            }
        }
        Err("malformed .npy header: fortran_order is not True or False".into())
    }
    fn tuple(&mut self) -> Result<Vec<usize>, String> {
        self.expect(b'(')?;
        let mut dims = Vec::new();
        loop {
            self.ws();
            if self.eat(b')') {
                return Ok(dims);
            }
            let start = self.i;
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.i += 1;
            }
            // Python 2 wrote long integers with an `L` suffix.
            let digits = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
            let _ = self.eat(b'L');
            let d = digits
                .parse::<usize>()
                .map_err(|_| "malformed .npy header: shape is not a tuple of sizes".to_string())?;
            dims.push(d);
            self.ws();
            if !self.eat(b',') {
                self.ws();
                self.expect(b')')?;
                return Ok(dims);
            }
        }
    }
}

/// Checks the shape is a stack of matrices and returns `(N, m, n)`.
fn stack_shape(
    path: &Path,
    shape: &[usize],
    what: &str,
) -> Result<(usize, usize, usize), CliError> {
    let dims = shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    match shape {
        [n, m, k] => {
            if *m == 0 || *k == 0 {
                return Err(bad(
                    path,
                    format_args!("shape ({dims}) has empty matrices; each needs at least one row and column"),
                ));
            }
            if *n == 0 {
                return Err(bad(path, format_args!("shape ({dims}) holds no {what}")));
            }
            Ok((*n, *m, *k))
        }
        [_, _] => Err(bad(
            path,
            format_args!(
                "a 2-D array of shape ({dims}); expected a stack of {what} (N, m, n): save X[None] for a single matrix"
            ),
        )),
        _ => Err(bad(
            path,
            format_args!(
                "a {}-D array of shape ({dims}); expected a stack of {what} of shape (N, m, n)",
                shape.len()
            ),
        )),
    }
}

/// A checked header, the stack shape `(N, m, n)` and the reader at the data.
type OpenStack = (Header, (usize, usize, usize), BufReader<File>);

/// Opens `path`, checks it is a 3-D stack of one of `allowed` types and
/// returns the header, the shape and the reader positioned at the data.
fn open_stack(
    path: &Path,
    allowed: &[Dtype],
    what: &str,
    hint: &str,
) -> Result<OpenStack, CliError> {
    let (mut r, file_len) = open(path)?;
    let (h, offset) = read_header(&mut r, path)?;
    if !allowed.contains(&h.dtype) {
        return Err(bad(
            path,
            format_args!(
                "dtype {} is not accepted for {what}: {hint}",
                h.dtype.name()
            ),
        ));
    }
    let shape = stack_shape(path, &h.shape, what)?;
    let elems = shape
        .0
        .checked_mul(shape.1)
        .and_then(|x| x.checked_mul(shape.2))
        .ok_or_else(|| bad(path, "the shape's element count overflows"))?;
    let bytes = (elems as u128) * h.dtype.size() as u128;
    let have = file_len.saturating_sub(offset) as u128;
    if have != bytes {
        return Err(bad(
            path,
            format_args!(
                "shape ({}, {}, {}) of {} needs {bytes} bytes of data, but the file holds {have} after its header: it is {}",
                shape.0,
                shape.1,
                shape.2,
                h.dtype.name(),
                if have < bytes { "truncated" } else { "corrupt (extra bytes)" }
            ),
        ));
    }
    Ok((h, shape, r))
}

/// Reads `count` elements of `size` bytes in chunks and converts each with `f`
/// (no second full-size copy of the file in memory).
fn read_elements<T>(
    r: &mut impl Read,
    path: &Path,
    count: usize,
    size: usize,
    f: impl Fn(&[u8]) -> T,
) -> Result<Vec<T>, CliError> {
    let mut out = Vec::with_capacity(count);
    let mut buf = vec![0u8; (1 << 16) / size * size];
    let mut left = count;
    while left > 0 {
        let take = left.min(buf.len() / size);
        let chunk = &mut buf[..take * size];
        r.read_exact(chunk)
            .map_err(|e| bad(path, format_args!("read failed: {e}")))?;
        out.extend(chunk.chunks_exact(size).map(&f));
        left -= take;
    }
    Ok(out)
}

/// Reads a stack of matrices `(N, m, n)` of float64 or float32 (converted
/// exactly to float64), C or Fortran order.
pub fn read_data(path: &Path) -> Result<Stack<f64>, CliError> {
    let (h, (count, rows, cols), mut r) = open_stack(
        path,
        &[Dtype::F64, Dtype::F32],
        "matrices",
        "convert with X.astype(np.float64)",
    )?;
    let n = count * rows * cols;
    let be = h.big_endian;
    let data = match h.dtype {
        Dtype::F64 => read_elements(&mut r, path, n, 8, |b| {
            let b: [u8; 8] = b.try_into().expect("8-byte chunk");
            if be {
                f64::from_be_bytes(b)
            } else {
                f64::from_le_bytes(b)
            }
        })?,
        Dtype::F32 => read_elements(&mut r, path, n, 4, |b| {
            let b: [u8; 4] = b.try_into().expect("4-byte chunk");
            f64::from(if be {
                f32::from_be_bytes(b)
            } else {
                f32::from_le_bytes(b)
            })
        })?,
        _ => unreachable!("dtype checked by open_stack"),
    };
    Ok(Stack {
        data,
        count,
        rows,
        cols,
        fortran_order: h.fortran_order,
    })
}

/// Reads a mask stack `(N, m, n)` of uint8 or bool (nonzero = observed).
pub fn read_mask(path: &Path) -> Result<Stack<u8>, CliError> {
    let (h, (count, rows, cols), mut r) = open_stack(
        path,
        &[Dtype::U8, Dtype::Bool],
        "masks",
        "masks must be uint8 or bool (nonzero = observed): save M.astype(np.uint8)",
    )?;
    let data = read_elements(&mut r, path, count * rows * cols, 1, |b| b[0])?;
    Ok(Stack {
        data,
        count,
        rows,
        cols,
        fortran_order: h.fortran_order,
    })
}

/// The header text for a C-order little-endian float64 array, padded so that
/// the data start at a multiple of 64 bytes (as NumPy writes it).
fn header_bytes(shape: &[usize]) -> Vec<u8> {
    let dims = match shape {
        [d] => format!("({d},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut dict = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {dims}, }}");
    // Version 1.0 holds headers up to 65535 bytes, which every shape here fits.
    let unpadded = MAGIC.len() + 2 + 2 + dict.len() + 1;
    let pad = (64 - unpadded % 64) % 64;
    dict.extend(std::iter::repeat_n(' ', pad));
    dict.push('\n');
    let mut out = Vec::with_capacity(10 + dict.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// Writes a C-order float64 array of `shape` (`data.len()` must be the
/// product of `shape`).
pub fn write_f64(path: &Path, shape: &[usize], data: &[f64]) -> Result<(), CliError> {
    assert_eq!(
        shape.iter().product::<usize>(),
        data.len(),
        "shape mismatch"
    );
    crate::output::write_atomically(path, |w| {
        w.write_all(&header_bytes(shape))?;
        for x in data {
            w.write_all(&x.to_le_bytes())?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numpy_headers() {
        let h =
            parse_header("{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4, 5), }    \n")
                .unwrap();
        assert_eq!(h.dtype, Dtype::F64);
        assert!(!h.fortran_order && !h.big_endian);
        assert_eq!(h.shape, vec![3, 4, 5]);
        let h = parse_header("{\"descr\":\">f4\",\"fortran_order\":True,\"shape\":(7,)}").unwrap();
        assert_eq!(
            (h.dtype, h.big_endian, h.fortran_order),
            (Dtype::F32, true, true)
        );
        assert_eq!(h.shape, vec![7]);
        let h = parse_header("{'descr': '|b1', 'fortran_order': False, 'shape': (), }").unwrap();
        assert_eq!(h.dtype, Dtype::Bool);
        assert!(h.shape.is_empty());
    }

    #[test]
    fn rejects_other_dtypes_with_their_numpy_name() {
        let e = parse_header("{'descr': '<i8', 'fortran_order': False, 'shape': (1, 2, 2), }")
            .unwrap_err();
        assert!(e.contains("int64"), "{e}");
        let e = parse_header("{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (1,), }")
            .unwrap_err();
        assert!(e.contains("structured"), "{e}");
        assert!(parse_header("{'descr': '<f8', 'shape': (1,), }").is_err());
        assert!(parse_header("{'descr': '<f8', 'fortran_order': Maybe}").is_err());
    }

    #[test]
    fn header_is_padded_to_64_bytes() {
        for shape in [vec![1usize, 2, 3], vec![123456, 2], vec![5]] {
            let b = header_bytes(&shape);
            assert_eq!(b.len() % 64, 0);
            assert_eq!(*b.last().unwrap(), b'\n');
            let h = read_header(&mut &b[..], Path::new("x")).unwrap().0;
            assert_eq!(h.shape, shape);
        }
    }

    #[test]
    fn fortran_layout_addresses_like_index() {
        let s = Stack {
            data: (0..24).map(|x| x as f64).collect(),
            count: 2,
            rows: 3,
            cols: 4,
            fortran_order: true,
        };
        let b = s.batch().unwrap();
        for i in 0..2 {
            for r in 0..3 {
                for c in 0..4 {
                    assert_eq!(b.sample(i)[(r, c)], s.data[s.index(i, r, c)]);
                }
            }
        }
    }
}
