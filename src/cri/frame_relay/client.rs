//! Frames from the caller: its SETTINGS, its header blocks (each call routed to containerd or
//! served by pullgate) and the frames of its calls, and the calls it ended that late frames
//! may still name.

use bytes::{Bytes, BytesMut};
use h2::Reason;

use super::owned::BodyEvent;
use super::{Fatal, PendingBlock, Relay, CLOSED_MEMORY, MAX_OWNED, OWNED_CONN_WINDOW, UPSTREAM_EXTRA_WINDOW};
use crate::cri::frames::{self, BlockError, Head, HEADER_LEN};

impl Relay {
    pub(super) fn on_client_frame(&mut self, head: Head, whole: &[u8]) -> Result<(), Fatal> {
        let payload = &whole[HEADER_LEN..];
        if !self.first_settings_seen {
            if head.kind != frames::SETTINGS || head.flags & frames::ACK != 0 {
                return Err(Reason::PROTOCOL_ERROR);
            }
            self.first_settings_seen = true;
            self.on_client_settings(head, payload)?;
            self.u_out.extend_from_slice(whole);
            // Pullgate's credit for containerd's data, which waits in pullgate when the caller's
            // window is short.
            frames::window_update(&mut self.u_out, 0, UPSTREAM_EXTRA_WINDOW);
            return Ok(());
        }
        if let Some(block) = self.c_block.as_mut() {
            if head.kind != frames::CONTINUATION || head.stream != block.stream {
                return Err(Reason::PROTOCOL_ERROR);
            }
            if block.fragment.len() + payload.len() > frames::MAX_HEADER_BLOCK {
                return Err(Reason::ENHANCE_YOUR_CALM);
            }
            block.fragment.extend_from_slice(payload);
            if head.flags & frames::END_HEADERS != 0 {
                let block = self.c_block.take().expect("checked above");
                self.client_block(block)?;
            }
            return Ok(());
        }
        let s = head.stream;
        match head.kind {
            frames::DATA => self.on_client_data(head, whole, payload)?,
            frames::HEADERS => {
                if s == 0 {
                    return Err(Reason::PROTOCOL_ERROR);
                }
                let (fragment, prio) = frames::headers_fragment(head.flags, payload)?;
                let block = PendingBlock {
                    stream: s,
                    end_stream: head.flags & frames::END_STREAM != 0,
                    prio,
                    fragment: fragment.to_vec(),
                    raw: Vec::new(),
                };
                if head.flags & frames::END_HEADERS != 0 {
                    self.client_block(block)?;
                } else {
                    self.c_block = Some(block);
                }
            }
            frames::CONTINUATION | frames::PUSH_PROMISE => return Err(Reason::PROTOCOL_ERROR),
            frames::RST_STREAM => self.on_client_rst_stream(head, whole, payload)?,
            frames::SETTINGS => {
                if head.flags & frames::ACK == 0 {
                    self.on_client_settings(head, payload)?;
                }
                self.u_out.extend_from_slice(whole);
            }
            frames::WINDOW_UPDATE => self.on_client_window_update(head, whole, payload)?,
            frames::PING => self.on_client_ping(head, whole, payload)?,
            frames::PRIORITY if self.owned.contains_key(&s) || self.is_dropped(s) => {}
            // PRIORITY, GOAWAY, extensions: containerd's business.
            _ => self.u_out.extend_from_slice(whole),
        }
        Ok(())
    }

    /// DATA: body data for a call pullgate serves, credited back for a call it dropped, passed on
    /// to containerd otherwise.
    fn on_client_data(&mut self, head: Head, whole: &[u8], payload: &[u8]) -> Result<(), Fatal> {
        let s = head.stream;
        if s == 0 {
            return Err(Reason::PROTOCOL_ERROR);
        }
        let data = frames::unpad(head.flags, payload)?;
        if let Some(o) = self.owned.get_mut(&s) {
            let flow = payload.len();
            o.recv_window -= flow as i64;
            let sent = match (&o.body, o.recv_window >= 0) {
                (Some(tx), true) => tx.send(BodyEvent::Data(Bytes::copy_from_slice(data), flow)).is_ok(),
                _ => false,
            };
            if sent {
                // Credited at once while the calls' unread bytes stay within
                // OWNED_CONN_WINDOW (what hyper's connection window allowed), so calls
                // that wait (for the buffer budget) do not hold the caller's connection
                // window; past it, as they are read. "At once" is with the next frames
                // for the caller (a unary call's answer, usually) or when
                // CLIENT_CREDIT_BATCH waits: the caller's window stays far from empty.
                o.unconsumed += flow;
                self.owned_unread += flow;
                if self.owned_unread <= OWNED_CONN_WINDOW {
                    self.client_credit_later += flow as u32;
                } else {
                    o.uncredited += flow;
                }
            } else {
                self.client_credit += flow as u32;
            }
            if o.recv_window < 0 {
                self.reset_owned(s, Reason::FLOW_CONTROL_ERROR);
            } else if head.flags & frames::END_STREAM != 0 {
                if let Some(tx) = o.body.take() {
                    let _ = tx.send(BodyEvent::End);
                }
            }
        } else if self.is_dropped(s) {
            self.client_credit += payload.len() as u32;
        } else {
            self.u_out.extend_from_slice(whole);
        }
        Ok(())
    }

    /// RST_STREAM: cancels a call pullgate serves, or goes to containerd.
    fn on_client_rst_stream(&mut self, head: Head, whole: &[u8], payload: &[u8]) -> Result<(), Fatal> {
        let s = head.stream;
        if payload.len() != 4 {
            return Err(Reason::FRAME_SIZE_ERROR);
        }
        if let Some(o) = self.owned.remove(&s) {
            // The caller cancelled a call pullgate serves: drop it, as hyper does.
            o.task.abort();
            self.client_credit += o.uncredited as u32;
            self.owned_unread -= o.unconsumed;
            self.remember_closed(s);
        } else if !self.is_dropped(s) {
            // The caller cancelled a relayed call (counted as cancelled, as hyper's
            // dropped response does).
            self.probes.remove(&s);
            self.u_out.extend_from_slice(whole);
        }
        Ok(())
    }

    /// WINDOW_UPDATE: the connection window and the windows of the calls pullgate serves are kept
    /// here; the rest goes to containerd.
    fn on_client_window_update(&mut self, head: Head, whole: &[u8], payload: &[u8]) -> Result<(), Fatal> {
        let s = head.stream;
        let inc = frames::window_increment(payload)?;
        if s == 0 {
            self.client_window += i64::from(inc);
            if self.client_window > frames::MAX_WINDOW {
                return Err(Reason::FLOW_CONTROL_ERROR);
            }
            self.drain_queue();
        } else if let Some(o) = self.owned.get_mut(&s) {
            o.send_window += i64::from(inc);
            if o.send_window > frames::MAX_WINDOW {
                self.reset_owned(s, Reason::FLOW_CONTROL_ERROR);
            } else {
                self.pump(s);
            }
        } else if !self.is_dropped(s) {
            self.u_out.extend_from_slice(whole);
        }
        Ok(())
    }

    /// PING: answered here; the answer to containerd's own PING goes to it.
    fn on_client_ping(&mut self, head: Head, whole: &[u8], payload: &[u8]) -> Result<(), Fatal> {
        let s = head.stream;
        if s != 0 {
            return Err(Reason::PROTOCOL_ERROR);
        }
        if payload.len() != 8 {
            return Err(Reason::FRAME_SIZE_ERROR);
        }
        if head.flags & frames::ACK != 0 {
            // The answer to containerd's own PING.
            self.u_out.extend_from_slice(whole);
        } else {
            // Answered here, as hyper did: part of what the caller receives on this
            // connection comes from pullgate, and gRPC clients ping after receiving data
            // (BDP estimation). Passed on, those pings reach a containerd that sent
            // nothing, which counts them as abuse and closes the connection with
            // GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings") (grpc-go's keepalive
            // enforcement). The relay ends with either socket, so a PING answered here
            // still says the path to containerd is up.
            frames::ping_ack(&mut self.c_out, payload);
        }
        Ok(())
    }

    fn on_client_settings(&mut self, head: Head, payload: &[u8]) -> Result<(), Fatal> {
        if head.stream != 0 {
            return Err(Reason::PROTOCOL_ERROR);
        }
        let before = self.client_settings;
        self.client_settings.apply(payload)?;
        if self.client_settings.header_table_size != before.header_table_size {
            self.resp_decoder.queue_size_update(self.client_settings.header_table_size);
        }
        let delta = self.client_settings.initial_window - before.initial_window;
        if delta != 0 {
            let ids: Vec<u32> = self.owned.keys().copied().collect();
            for id in ids {
                let Some(o) = self.owned.get_mut(&id) else { continue };
                o.send_window += delta;
                if o.send_window > frames::MAX_WINDOW {
                    return Err(Reason::FLOW_CONTROL_ERROR);
                }
                self.pump(id);
            }
        }
        Ok(())
    }

    /// Frames for a stream pullgate served and closed, or that was never opened: dropped.
    fn is_dropped(&self, stream: u32) -> bool {
        stream > self.last_client_stream || self.closed.contains(&stream)
    }

    pub(super) fn remember_closed(&mut self, stream: u32) {
        if self.closed.len() == CLOSED_MEMORY {
            self.closed.pop_front();
        }
        self.closed.push_back(stream);
    }

    /// A whole header block from the caller: a new call, or trailers.
    fn client_block(&mut self, block: PendingBlock) -> Result<(), Fatal> {
        let s = block.stream;
        let decoded = match frames::decode_block(&mut self.req_decoder, &block.fragment) {
            Ok(d) => d,
            Err(BlockError::Connection(r)) => return Err(r),
            Err(BlockError::Malformed) => return Err(Reason::PROTOCOL_ERROR),
        };
        if s <= self.last_client_stream {
            // Trailers (or a HEADERS on a closed stream).
            if let Some(o) = self.owned.get_mut(&s) {
                match o.body.take() {
                    Some(tx) if block.end_stream && !decoded.malformed && !decoded.has_pseudo() => {
                        let _ = tx.send(BodyEvent::Trailers(decoded.header_map()));
                    }
                    _ => self.reset_owned(s, Reason::PROTOCOL_ERROR),
                }
            } else if !self.closed.contains(&s) {
                if decoded.malformed || decoded.has_pseudo() || !block.end_stream {
                    frames::rst_stream(&mut self.c_out, s, Reason::PROTOCOL_ERROR);
                    frames::rst_stream(&mut self.u_out, s, Reason::PROTOCOL_ERROR);
                } else {
                    self.forward_block(s, true, block.prio, decoded.fields);
                }
            }
            return Ok(());
        }
        if s.is_multiple_of(2) {
            return Err(Reason::PROTOCOL_ERROR);
        }
        self.last_client_stream = s;
        if decoded.malformed || decoded.check_request().is_err() {
            frames::rst_stream(&mut self.c_out, s, Reason::PROTOCOL_ERROR);
            self.remember_closed(s);
            return Ok(());
        }
        let path = decoded.path().unwrap_or("/");
        let path = path.split('?').next().unwrap_or(path);
        if self.proxy.passes_through(&self.peer, path) {
            if let Some(probe) = super::super::calls::start(self.calls, path) {
                self.probes.insert(s, (probe, false));
            }
            self.forward_block(s, block.end_stream, block.prio, decoded.fields);
            return Ok(());
        }
        if self.owned.len() >= MAX_OWNED {
            frames::rst_stream(&mut self.c_out, s, Reason::REFUSED_STREAM);
            self.remember_closed(s);
            return Ok(());
        }
        let req = match decoded.request() {
            Ok(r) => r,
            Err(_) => {
                frames::rst_stream(&mut self.c_out, s, Reason::PROTOCOL_ERROR);
                self.remember_closed(s);
                return Ok(());
            }
        };
        self.own(s, req, block.end_stream);
        Ok(())
    }

    fn forward_block(&mut self, stream: u32, end_stream: bool, prio: Option<[u8; 5]>, fields: Vec<h2::hpack_export::Header>) {
        let mut encoded = BytesMut::new();
        frames::encode_block(&mut self.encoder, fields, &mut encoded);
        frames::header_frames(&mut self.u_out, stream, end_stream, prio, &encoded, self.server_settings.max_frame as usize);
    }
}
