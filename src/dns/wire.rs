//! DNS messages, sans-IO: a query for one question, and the check of an answer against it.
//! The wire format itself is hickory-proto's; this file decides what an answer means.
//! Answers are untrusted: never a panic, and a CNAME chain is followed at most
//! `MAX_CNAME` links within one answer.

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, RData};
pub use hickory_proto::rr::{Name, RecordType};

/// Links followed inside one answer, and restarts across answers (see `Resolver::query`).
pub const MAX_CNAME: usize = 8;
/// What we tell the server we take over UDP (RFC 9715's safe size); more comes over TCP.
pub const UDP_PAYLOAD: u16 = 1232;

/// One question, with the id its answer must carry.
#[derive(Clone, Debug)]
pub struct Question {
    pub id: u16,
    pub name: Name,
    pub rtype: RecordType,
}

/// One record of the asked type, reduced to what mxd uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rdata {
    /// (preference, exchange: lowercase, no trailing dot; "" for the root, RFC 7505's null MX)
    Mx(u16, String),
    Addr(IpAddr),
    /// A PTR's or a CNAME's target, lowercase, no trailing dot.
    Name(String),
}

/// What an answer that matches its question says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Records(Vec<Rdata>),
    /// The name does not exist (RCODE 3).
    NxDomain,
    /// The name exists without records of this type.
    NoData,
    /// The chain of CNAMEs ends at this name, which the answer says nothing more about:
    /// ask again for it.
    Cname(Name),
    /// The TC bit: ask again over TCP.
    Truncated,
    /// SERVFAIL, REFUSED and the other RCODEs: this server cannot answer now.
    ServerFailure(ResponseCode),
}

/// Why bytes are not an answer to the question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Not for us (another id, another question, not a response): wait for the real one.
    Mismatch(&'static str),
    /// For us, but unusable.
    Malformed(String),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Mismatch(why) => write!(f, "answer does not match the question: {why}"),
            WireError::Malformed(why) => write!(f, "malformed answer: {why}"),
        }
    }
}

/// The query bytes: recursion desired, EDNS0 with our UDP payload size.
pub fn encode(q: &Question) -> Result<Vec<u8>, WireError> {
    let mut m = Message::new();
    m.set_id(q.id).set_message_type(MessageType::Query).set_op_code(OpCode::Query).set_recursion_desired(true);
    m.add_query(Query::query(q.name.clone(), q.rtype));
    let mut edns = Edns::new();
    edns.set_max_payload(UDP_PAYLOAD);
    m.set_edns(edns);
    m.to_vec().map_err(|e| WireError::Malformed(format!("cannot encode the query for {}: {e}", q.name)))
}

/// Checks `bytes` against `q` and says what they answer.
pub fn decode(q: &Question, bytes: &[u8]) -> Result<Answer, WireError> {
    // A truncated answer may be cut inside a record, so the TC bit is read before a full parse.
    let (Some(id), Some(flags)) = (bytes.get(..2), bytes.get(2)) else {
        return Err(WireError::Malformed(format!("{} bytes, shorter than a header", bytes.len())));
    };
    if u16::from_be_bytes([id[0], id[1]]) != q.id {
        return Err(WireError::Mismatch("id"));
    }
    if flags & 0x80 == 0 {
        return Err(WireError::Mismatch("not a response"));
    }
    if flags & 0x02 != 0 {
        return Ok(Answer::Truncated);
    }
    let m = Message::from_vec(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
    if m.op_code() != OpCode::Query {
        return Err(WireError::Mismatch("opcode"));
    }
    match m.queries() {
        [only]
            if only.name().eq_ignore_root(&q.name)
                && only.query_type() == q.rtype
                && only.query_class() == DNSClass::IN => {}
        _ => return Err(WireError::Mismatch("question")),
    }
    match m.response_code() {
        ResponseCode::NoError => Ok(records(q, &m)?),
        ResponseCode::NXDomain => Ok(Answer::NxDomain),
        other => Ok(Answer::ServerFailure(other)),
    }
}

/// The records of the asked type at the end of the CNAME chain starting at the question.
fn records(q: &Question, m: &Message) -> Result<Answer, WireError> {
    let mut name = q.name.clone();
    let mut followed = false;
    for _ in 0..=MAX_CNAME {
        let here: Vec<&RData> =
            m.answers().iter().filter(|r| r.name().eq_ignore_root(&name)).map(|r| r.data()).collect();
        let found: Vec<Rdata> = here.iter().filter_map(|d| rdata(d, q.rtype)).collect();
        if !found.is_empty() {
            return Ok(Answer::Records(found));
        }
        let cname = here.iter().find_map(|d| match d {
            RData::CNAME(c) if q.rtype != RecordType::CNAME => Some(c.0.clone()),
            _ => None,
        });
        match cname {
            Some(next) => {
                name = next;
                followed = true;
            }
            None if followed => return Ok(Answer::Cname(name)),
            None => return Ok(Answer::NoData),
        }
    }
    Err(WireError::Malformed(format!("CNAME chain longer than {MAX_CNAME} from {}", q.name)))
}

fn rdata(d: &RData, rtype: RecordType) -> Option<Rdata> {
    match (d, rtype) {
        (RData::MX(mx), RecordType::MX) => Some(Rdata::Mx(mx.preference(), text(mx.exchange()))),
        (RData::A(a), RecordType::A) => Some(Rdata::Addr(IpAddr::V4(a.0))),
        (RData::AAAA(a), RecordType::AAAA) => Some(Rdata::Addr(IpAddr::V6(a.0))),
        (RData::PTR(p), RecordType::PTR) => Some(Rdata::Name(text(&p.0))),
        (RData::CNAME(c), RecordType::CNAME) => Some(Rdata::Name(text(&c.0))),
        _ => None,
    }
}

/// A name as mxd compares and logs it: lowercase ASCII (punycode), no trailing dot.
pub fn text(name: &Name) -> String {
    super::conf::normalize(&name.to_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, CNAME, MX};
    use hickory_proto::rr::Record;

    fn q(name: &str, rtype: RecordType) -> Question {
        Question { id: 0x1234, name: Name::from_ascii(name).unwrap(), rtype }
    }

    fn answer(q: &Question, rcode: ResponseCode, records: Vec<Record>) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(q.id).set_message_type(MessageType::Response).set_response_code(rcode);
        m.add_query(Query::query(q.name.clone(), q.rtype));
        m.add_answers(records);
        m.to_vec().unwrap()
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    #[test]
    fn mx_answer_and_null_mx() {
        let q = q("Example.TEST.", RecordType::MX);
        let recs = vec![
            Record::from_rdata(name("example.test."), 60, RData::MX(MX::new(20, name("B.example.test.")))),
            Record::from_rdata(name("example.test."), 60, RData::MX(MX::new(0, Name::root()))),
        ];
        let want = Answer::Records(vec![Rdata::Mx(20, "b.example.test".into()), Rdata::Mx(0, String::new())]);
        assert_eq!(decode(&q, &answer(&q, ResponseCode::NoError, recs)), Ok(want));
        assert_eq!(decode(&q, &answer(&q, ResponseCode::NoError, vec![])), Ok(Answer::NoData));
        assert_eq!(decode(&q, &answer(&q, ResponseCode::NXDomain, vec![])), Ok(Answer::NxDomain));
        assert_eq!(
            decode(&q, &answer(&q, ResponseCode::ServFail, vec![])),
            Ok(Answer::ServerFailure(ResponseCode::ServFail))
        );
    }

    #[test]
    fn mismatches_are_not_answers() {
        let q1 = q("a.test.", RecordType::A);
        let mut other = q1.clone();
        other.id ^= 1;
        assert_eq!(decode(&q1, &answer(&other, ResponseCode::NoError, vec![])), Err(WireError::Mismatch("id")));
        let other = q("b.test.", RecordType::A);
        let bytes = answer(&Question { id: q1.id, ..other }, ResponseCode::NoError, vec![]);
        assert_eq!(decode(&q1, &bytes), Err(WireError::Mismatch("question")));
        let query = encode(&q1).unwrap();
        assert_eq!(decode(&q1, &query), Err(WireError::Mismatch("not a response")));
        assert!(matches!(decode(&q1, &[0x12]), Err(WireError::Malformed(_))));
        let mut tc = answer(&q1, ResponseCode::NoError, vec![]);
        tc[2] |= 0x02;
        tc.truncate(14);
        assert_eq!(decode(&q1, &tc), Ok(Answer::Truncated));
    }

    #[test]
    fn cname_chains() {
        let q = q("www.test.", RecordType::A);
        let cname = |from: &str, to: &str| Record::from_rdata(name(from), 60, RData::CNAME(CNAME(name(to))));
        let a = Record::from_rdata(name("host.test."), 60, RData::A(A::new(192, 0, 2, 1)));
        let bytes = answer(&q, ResponseCode::NoError, vec![cname("www.test.", "host.test."), a]);
        assert_eq!(decode(&q, &bytes), Ok(Answer::Records(vec![Rdata::Addr("192.0.2.1".parse().unwrap())])));
        let bytes = answer(&q, ResponseCode::NoError, vec![cname("www.test.", "far.test.")]);
        assert_eq!(decode(&q, &bytes), Ok(Answer::Cname(name("far.test."))));
        let looped =
            answer(&q, ResponseCode::NoError, vec![cname("www.test.", "x.test."), cname("x.test.", "www.test.")]);
        assert!(matches!(decode(&q, &looped), Err(WireError::Malformed(_))));
    }
}
