//! The wait for the client's reverse DNS before the greeting: OpenSMTPD resolves a client
//! before it says 220, so `match from rdns` and the Received header know its name. The
//! session only waits; the lookup (and its deadline) is the server's, and the name itself
//! is the policy's.

use super::{reply, Policy, Session, State};

impl<P: Policy> Session<P> {
    /// Holds the greeting until `handle_rdns`; reads nothing meanwhile. Call it right after
    /// `new`, before any input (later calls in another state are no-ops).
    pub fn await_rdns(&mut self) {
        if matches!(self.state, State::Greeting) && self.helo.is_none() {
            self.out.clear();
            self.state = State::AwaitRdns;
        }
    }

    /// Whether the greeting still waits for the client's name.
    pub fn awaiting_rdns(&self) -> bool {
        matches!(self.state, State::AwaitRdns)
    }

    /// This host's name for the client, chosen while the greeting waits (`hostnames <t>`
    /// answered by a table process): the greeting and EHLO say it.
    pub fn set_hostname(&mut self, name: String) {
        if name != self.cfg.hostname {
            self.cfg =
                std::sync::Arc::new(super::SessionConfig { hostname: name, ..super::SessionConfig::clone(&self.cfg) });
        }
    }

    /// The lookup ended (with a name or without, or the server stopped waiting): greet.
    pub fn handle_rdns(&mut self) {
        if matches!(self.state, State::AwaitRdns) {
            self.state = State::Greeting;
            reply::greeting(&mut self.out, &self.cfg.hostname);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use crate::envelope::MsgId;
    use crate::smtp::{Policy, Reply, Session, SessionConfig, TlsPolicy, TxContext};

    struct Any;
    impl Policy for Any {
        type Rcpt = ();
        fn new_msgid(&mut self) -> MsgId {
            MsgId(1)
        }
        fn check_mail(&mut self, _: &TxContext<'_>) -> Result<(), Reply> {
            Ok(())
        }
        fn check_rcpt(&mut self, _: &TxContext<'_>, _: &str) -> Result<(), Reply> {
            Ok(())
        }
    }

    fn session(now: Instant) -> Session<Any> {
        let cfg = SessionConfig {
            hostname: "mx.test".into(),
            max_message_size: 1 << 20,
            max_rcpt: 10,
            max_errors: 5,
            idle_timeout: Duration::from_secs(300),
            tls: TlsPolicy::Unavailable,
            tls_active: false,
        };
        Session::new(Arc::new(cfg), Any, now)
    }

    #[test]
    fn greeting_waits_for_the_name_and_input_waits_with_it() {
        let now = Instant::now();
        let mut s = session(now);
        s.await_rdns();
        assert!(s.output().is_empty() && !s.wants_read() && s.awaiting_rdns());
        assert_eq!(s.handle_input(b"EHLO early\r\n", now), 0);
        s.set_hostname("mx2.test".into());
        s.handle_rdns();
        assert!(s.output().starts_with(b"220 mx2.test ESMTP"), "{:?}", String::from_utf8_lossy(s.output()));
        assert!(s.wants_read());
        // A second answer (a late lookup after the deadline) changes nothing.
        let len = s.output().len();
        s.handle_rdns();
        assert_eq!(s.output().len(), len);
        assert!(!s.awaiting_rdns());
    }

    #[test]
    fn an_smtps_handshake_ending_during_the_wait_still_gets_the_greeting() {
        let now = Instant::now();
        let mut s = session(now);
        s.await_rdns();
        s.handle_tls(crate::smtp::TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_256_GCM_SHA384".into(),
            bits: 256,
        });
        assert!(s.awaiting_rdns() && s.output().is_empty());
        s.handle_rdns();
        assert!(s.output().starts_with(b"220 mx.test ESMTP"), "{:?}", String::from_utf8_lossy(s.output()));
    }

    #[test]
    fn a_client_leaving_during_the_wait_closes_the_session() {
        let now = Instant::now();
        let mut s = session(now);
        s.await_rdns();
        s.handle_eof();
        assert!(s.is_closing());
        s.handle_rdns();
        assert!(s.output().is_empty());
    }
}
