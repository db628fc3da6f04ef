//! A reader for what `pg_recvlogical -f FILE` writes for the pgoutput plugin (protocol version 1): the binary
//! messages in order, each followed by a newline. The payload may itself hold newline bytes (in LSNs, oids,
//! lengths), so the file is read message by message, never split at newlines.

use std::collections::BTreeMap;

/// One row inserted into a relation: `schema.table` and its columns as text (`None` for NULL or unchanged TOAST).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    pub relation: String,
    pub values: Vec<Option<String>>,
}

/// The inserts in a pg_recvlogical output file, in order. A last message cut short (a consumer killed while
/// writing) ends the list; anything else malformed is an error naming its offset.
pub fn inserts(data: &[u8]) -> Result<Vec<Insert>, String> {
    let mut relations: BTreeMap<u32, String> = BTreeMap::new();
    let mut out = Vec::new();
    let mut cur = Cursor { data, at: 0 };
    while cur.at < data.len() {
        let start = cur.at;
        match message(&mut cur, &mut relations) {
            Ok(Some(found)) => out.extend(found),
            Ok(None) => break,
            Err(e) => return Err(format!("pgoutput message at offset {start}: {e}")),
        }
        match cur.u8() {
            Some(b'\n') => {}
            None => break,
            Some(other) => {
                return Err(format!("pgoutput message at offset {start} ends with byte {other:#04x}, not a newline"))
            }
        }
    }
    Ok(out)
}

/// Reads one message. `Ok(None)`: the data ends inside it.
fn message(cur: &mut Cursor, relations: &mut BTreeMap<u32, String>) -> Result<Option<Option<Insert>>, String> {
    let Some(kind) = cur.u8() else { return Ok(None) };
    let parsed = match kind {
        b'B' => cur.skip(8 + 8 + 4).map(|_| None),     // final LSN, commit time, xid
        b'C' => cur.skip(1 + 8 + 8 + 8).map(|_| None), // flags, commit LSN, end LSN, commit time
        b'O' => cur.skip(8).and_then(|_| cur.cstr()).map(|_| None),
        b'Y' => cur.skip(4).and_then(|_| cur.cstr()).and_then(|_| cur.cstr()).map(|_| None),
        b'R' => relation(cur, relations).map(|_| None),
        b'I' => return insert(cur, relations),
        b'U' => update(cur)?.map(|_| None),
        b'D' => old_tuple(cur)?.map(|_| None),
        b'T' => cur.i32().and_then(|n| cur.skip(1 + 4 * usize::try_from(n).unwrap_or(0))).map(|_| None),
        other => return Err(format!("unknown message type {other:#04x} (protocol version 1 has B C O Y R I U D T)")),
    };
    Ok(parsed)
}

fn relation(cur: &mut Cursor, relations: &mut BTreeMap<u32, String>) -> Option<()> {
    let oid = cur.u32()?;
    let schema = cur.cstr()?;
    let name = cur.cstr()?;
    cur.skip(1)?; // replica identity
    let columns = cur.i16()?;
    for _ in 0..columns {
        cur.skip(1)?; // flags
        cur.cstr()?;
        cur.skip(4 + 4)?; // type oid, typmod
    }
    relations.insert(oid, format!("{schema}.{name}"));
    Some(())
}

fn insert(cur: &mut Cursor, relations: &BTreeMap<u32, String>) -> Result<Option<Option<Insert>>, String> {
    let Some(oid) = cur.u32() else { return Ok(None) };
    match cur.u8() {
        None => return Ok(None),
        Some(b'N') => {}
        Some(other) => return Err(format!("insert into relation {oid}: tuple marker {other:#04x}, not 'N'")),
    }
    let Some(values) = tuple(cur)? else { return Ok(None) };
    let relation = relations.get(&oid).cloned().ok_or_else(|| format!("insert into relation {oid} before its R"))?;
    Ok(Some(Some(Insert { relation, values })))
}

fn update(cur: &mut Cursor) -> Result<Option<()>, String> {
    if cur.u32().is_none() {
        return Ok(None);
    }
    let mut marker = cur.u8();
    if matches!(marker, Some(b'K' | b'O')) {
        if tuple(cur)?.is_none() {
            return Ok(None);
        }
        marker = cur.u8();
    }
    match marker {
        None => Ok(None),
        Some(b'N') => Ok(tuple(cur)?.map(|_| ())),
        Some(other) => Err(format!("update: tuple marker {other:#04x}")),
    }
}

fn old_tuple(cur: &mut Cursor) -> Result<Option<()>, String> {
    if cur.u32().is_none() {
        return Ok(None);
    }
    match cur.u8() {
        None => Ok(None),
        Some(b'K' | b'O') => Ok(tuple(cur)?.map(|_| ())),
        Some(other) => Err(format!("delete: tuple marker {other:#04x}")),
    }
}

/// TupleData: a column count, then per column `n` (NULL), `u` (unchanged TOAST), or `t`/`b` with a length.
fn tuple(cur: &mut Cursor) -> Result<Option<Vec<Option<String>>>, String> {
    let Some(n) = cur.i16() else { return Ok(None) };
    let mut values = Vec::new();
    for _ in 0..n {
        match cur.u8() {
            None => return Ok(None),
            Some(b'n' | b'u') => values.push(None),
            Some(b't' | b'b') => {
                let Some(len) = cur.i32() else { return Ok(None) };
                let len = usize::try_from(len).map_err(|_| format!("column length {len}"))?;
                let Some(bytes) = cur.take(len) else { return Ok(None) };
                values.push(Some(String::from_utf8_lossy(bytes).into_owned()));
            }
            Some(other) => return Err(format!("column kind {other:#04x}")),
        }
    }
    Ok(Some(values))
}

/// Big-endian reads over a byte slice; `None` once the data runs out.
struct Cursor<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let bytes = self.data.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(bytes)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn i16(&mut self) -> Option<i16> {
        self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i32(&mut self) -> Option<i32> {
        self.u32().map(|v| v as i32)
    }
    fn cstr(&mut self) -> Option<String> {
        let rest = self.data.get(self.at..)?;
        let end = rest.iter().position(|b| *b == 0)?;
        self.at += end + 1;
        Some(String::from_utf8_lossy(&rest[..end]).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn begin() -> Vec<u8> {
        // Final LSN 0/0A0A0A0A and xid 10: newline bytes inside a message.
        let mut m = vec![b'B'];
        m.extend_from_slice(&0x0A0A_0A0Au64.to_be_bytes());
        m.extend_from_slice(&0u64.to_be_bytes());
        m.extend_from_slice(&10u32.to_be_bytes());
        m
    }

    fn relation(oid: u32, name: &str) -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&oid.to_be_bytes());
        m.extend_from_slice(b"public\0");
        m.extend_from_slice(name.as_bytes());
        m.extend_from_slice(b"\0d");
        m.extend_from_slice(&1i16.to_be_bytes());
        m.extend_from_slice(b"\x01id\0");
        m.extend_from_slice(&23u32.to_be_bytes());
        m.extend_from_slice(&(-1i32).to_be_bytes());
        m
    }

    fn insert(oid: u32, id: &str) -> Vec<u8> {
        let mut m = vec![b'I'];
        m.extend_from_slice(&oid.to_be_bytes());
        m.extend_from_slice(b"N");
        m.extend_from_slice(&1i16.to_be_bytes());
        m.push(b't');
        m.extend_from_slice(&(id.len() as i32).to_be_bytes());
        m.extend_from_slice(id.as_bytes());
        m
    }

    fn commit() -> Vec<u8> {
        let mut m = vec![b'C', 0];
        m.extend_from_slice(&[0x0A; 24]);
        m
    }

    fn file(messages: &[Vec<u8>]) -> Vec<u8> {
        messages.iter().flat_map(|m| m.iter().copied().chain([b'\n'])).collect()
    }

    #[test]
    fn reads_inserts_across_newline_bytes_and_stops_at_a_cut_tail() {
        // Oid 0x0A0A: the relation's oid is full of newline bytes too.
        let data = file(&[begin(), relation(0x0A0A, "acked"), insert(0x0A0A, "1"), insert(0x0A0A, "10"), commit()]);
        let got = inserts(&data).unwrap();
        let ids: Vec<_> = got.iter().map(|i| (i.relation.as_str(), i.values[0].as_deref())).collect();
        assert_eq!(ids, [("public.acked", Some("1")), ("public.acked", Some("10"))]);
        for cut in 0..data.len() {
            let part = inserts(&data[..cut]).unwrap();
            assert!(part.len() <= 2, "cut at {cut}");
        }
        let mut bad = data.clone();
        bad[21] = b'x'; // the newline after the begin message
        assert!(inserts(&bad).unwrap_err().contains("not a newline"));
        assert!(inserts(&file(&[vec![b'Z']])).unwrap_err().contains("unknown message type"));
    }
}
