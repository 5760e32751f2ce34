// The BLS alltoallv core (see core.hpp).
#include "core.hpp"

#include <sched.h>

#include <algorithm>
#include <cstring>
#include <cmath>
#include <sstream>
#include <thread>

namespace bls {

namespace {

std::mutex parked_mutex;
std::vector<std::shared_ptr<void>>& parked() {
  static auto* kept = new std::vector<std::shared_ptr<void>>();  // never destroyed
  return *kept;
}

std::string list(const std::vector<int>& v) {
  std::ostringstream s;
  s << "[";
  for (size_t k = 0; k < v.size(); ++k) s << (k ? ", " : "") << v[k];
  s << "]";
  return s.str();
}

std::string seconds(double t) {
  std::ostringstream s;
  s << t;
  return s.str();
}

void check_mpi(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int n = 0;
  MPI_Error_string(rc, text, &n);
  throw Error(ErrorKind::usage, std::string(what) + " failed: " + std::string(text, n));
}

}  // namespace

void park(std::shared_ptr<void> what) {
  std::lock_guard<std::mutex> g(parked_mutex);
  parked().push_back(std::move(what));
}

Deadline deadline_after(double s) {
  if (!(s > 0)) return std::nullopt;
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(
                            std::chrono::duration<double>(s));
}

bool polite_wait(const std::function<bool()>& done, Deadline deadline, Lock* lock,
                 const Backoff& b) {
  if (done()) return true;
  auto start = Clock::now();
  auto spin_until = start + std::chrono::duration_cast<Clock::duration>(
                                std::chrono::duration<double>(b.spin_s));
  auto give_up = [&](Clock::time_point t) { return deadline && t > *deadline; };
  // test and yield: a message on its way needs a few rounds of progress on both sides
  while (true) {
    auto t = Clock::now();
    if (t > spin_until) break;
    if (give_up(t)) return done();
    if (lock) lock->unlock();
    sched_yield();
    if (lock) lock->lock();
    if (done()) return true;
  }
  // a peer is behind: sleep, doubling the pause
  double pause = b.first_sleep;
  while (true) {
    auto t = Clock::now();
    if (give_up(t)) return done();
    double p = pause;
    if (deadline) {
      double left = std::chrono::duration<double>(*deadline - t).count();
      p = std::min(p, std::max(left, 0.0) + 1e-6);
    }
    if (lock) lock->unlock();
    std::this_thread::sleep_for(std::chrono::duration<double>(p));
    if (lock) lock->lock();
    if (done()) return true;
    pause = std::min(2 * pause, b.max_sleep);
  }
}

std::exception_ptr timeout_error(int64_t iteration, std::vector<int> peers, int64_t lag,
                                 double timeout_s, const std::string& waiting_for) {
  std::string within = timeout_s > 0 ? " within " + seconds(timeout_s) + " s" : "";
  std::string text;
  if (waiting_for == "send") {
    text = "BLS alltoallv exchange " + std::to_string(iteration) +
           ": this rank's pieces did not leave" + within + ": waiting for peer(s) " +
           list(peers) + " to receive them; this rank has posted " + std::to_string(lag) +
           " exchange(s) from this one on (has a peer died or stopped calling?)";
  } else {
    text = "BLS alltoallv exchange " + std::to_string(iteration) + " did not complete" +
           within + ": no data from peer(s) " + list(peers) + "; this rank is " +
           std::to_string(lag) +
           " exchange(s) ahead of the slowest of them (has a peer died or stopped posting?)";
  }
  Error e(ErrorKind::timeout, text);
  e.iteration = iteration;
  e.peers = std::move(peers);
  e.lag = lag;
  e.timeout_s = timeout_s;
  e.waiting_for = waiting_for;
  return std::make_exception_ptr(e);
}

Core::Core(MPI_Comm comm, int lag_bound, double timeout_s, bool persistent)
    : lag_(lag_bound), timeout_s_(timeout_s), persistent_on_(persistent) {
  if (lag_bound < 0 || lag_bound + 1 >= 32767)
    throw Error(ErrorKind::usage, "the lag bound must be an integer >= 0 and below 32766");
  check_mpi(MPI_Comm_dup(comm, &comm_), "MPI_Comm_dup");
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  for (int k = 1; k < size_; ++k) peers_.push_back((rank_ + k) % size_);
  seen_.resize(lag_ + 1);
  persistent_.resize(lag_ + 1);
}

Core::~Core() {
  // Not closed (an error path): leave MPI alone, keep what it may touch.
  if (!closed_) abort();
}

int Core::persistent_slots() const {
  int n = 0;
  for (auto& p : persistent_) n += p != nullptr;
  return n;
}

void Core::check_open() const {
  if (closed_) throw Error(ErrorKind::closed, "the 'bls' process group was destroyed");
}

Deadline Core::step_deadline(Deadline call) const {
  return call ? call : deadline_after(timeout_s_);
}

ExchangePtr Core::post(const char* send, const std::vector<int64_t>& send_bytes, char* recv,
                       const std::vector<int64_t>& recv_bytes, std::shared_ptr<void> keep,
                       std::function<void()> on_done, Lock* lock) {
  check_open();
  const int P = size_;
  if ((int)send_bytes.size() != P || (int)recv_bytes.size() != P)
    throw Error(ErrorKind::usage, "need one count per rank");
  if (send_bytes[rank_] != recv_bytes[rank_])
    throw Error(ErrorKind::count, "rank " + std::to_string(rank_) + " sends " +
                                      std::to_string(send_bytes[rank_]) +
                                      " bytes to itself but expects " +
                                      std::to_string(recv_bytes[rank_]));
  // The lag bound and the send-buffer bound, before anything of this exchange starts;
  // a wait releases the lock, so both are checked again after it.
  double send_wait = 0;
  while (true) {
    check_open();
    if ((int)in_flight_.size() > lag_) {
      complete_front(std::nullopt, -1, lock);
      continue;
    }
    int64_t oldest_allowed = posted_ - lag_;
    if (!sending_.empty() && sending_.front()->iteration < oldest_allowed) {
      auto t0 = Clock::now();
      flush_sends(oldest_allowed - 1, std::nullopt, -1, lock);
      send_wait += std::chrono::duration<double>(Clock::now() - t0).count();
      continue;
    }
    break;
  }
  auto ex = std::make_shared<Exchange>();
  ex->iteration = posted_;
  ex->slot = static_cast<int>(posted_ % (lag_ + 1));
  ex->send_wait_s = send_wait;
  ex->keep = std::move(keep);
  ex->on_done = std::move(on_done);
  const int n = P - 1;
  std::vector<int64_t> sdispl(P, 0), rdispl(P, 0);
  for (int p = 1; p < P; ++p) {
    sdispl[p] = sdispl[p - 1] + send_bytes[p - 1];
    rdispl[p] = rdispl[p - 1] + recv_bytes[p - 1];
  }
  ex->expect.resize(n);
  for (int k = 0; k < n; ++k) {
    ex->expect[k] = recv_bytes[peers_[k]];
    ex->bytes_received += recv_bytes[peers_[k]];
    ex->bytes_sent += send_bytes[peers_[k]];
  }
  ex->arrived.assign(n, 0);
  ex->left.assign(n, 0);
  for (int k = 0; k < P; ++k)
    if (send_bytes[k] > INT32_MAX || recv_bytes[k] > INT32_MAX)
      throw Error(ErrorKind::usage, "a piece of more than 2 GiB");
  const int tag = ex->slot;
  Persistent* slot_reqs = nullptr;
  if (persistent_on_ && n > 0) {
    auto& entry = persistent_[ex->slot];
    if (entry && entry->key.same(send, recv, send_bytes, recv_bytes)) {
      slot_reqs = entry.get();
    } else if (seen_[ex->slot].same(send, recv, send_bytes, recv_bytes)) {
      // the slot's previous exchange (i - L - 1 or older) is complete and sent: its
      // persistent requests are inactive
      if (entry)
        for (auto& r : entry->reqs) MPI_Request_free(&r);
      entry = std::make_unique<Persistent>();
      entry->key = seen_[ex->slot];
      entry->reqs.resize(2 * n);
      for (int k = 0; k < n; ++k) {
        int p = peers_[k];
        check_mpi(MPI_Recv_init(recv + rdispl[p], (int)recv_bytes[p], MPI_BYTE, p, tag, comm_,
                                &entry->reqs[k]),
                  "MPI_Recv_init");
      }
      for (int k = 0; k < n; ++k) {
        int p = peers_[k];
        check_mpi(MPI_Send_init(send + sdispl[p], (int)send_bytes[p], MPI_BYTE, p, tag, comm_,
                                &entry->reqs[n + k]),
                  "MPI_Send_init");
      }
      slot_reqs = entry.get();
    } else {
      seen_[ex->slot] = Slot{send, recv, send_bytes, recv_bytes, true};
    }
  }
  if (slot_reqs) {
    check_mpi(MPI_Startall(2 * n, slot_reqs->reqs.data()), "MPI_Startall");
    ex->recv = slot_reqs->reqs.data();
    ex->send = slot_reqs->reqs.data() + n;
  } else {
    ex->own.assign(2 * n, MPI_REQUEST_NULL);
    for (int k = 0; k < n; ++k) {
      int p = peers_[k];
      check_mpi(MPI_Irecv(recv + rdispl[p], (int)recv_bytes[p], MPI_BYTE, p, tag, comm_,
                          &ex->own[k]),
                "MPI_Irecv");
    }
    for (int k = 0; k < n; ++k) {
      int p = peers_[k];
      check_mpi(MPI_Isend(send + sdispl[p], (int)send_bytes[p], MPI_BYTE, p, tag, comm_,
                          &ex->own[n + k]),
                "MPI_Isend");
    }
    ex->recv = ex->own.data();
    ex->send = ex->own.data() + n;
  }
  if (send_bytes[rank_] > 0 && send + sdispl[rank_] != recv + rdispl[rank_])
    std::memmove(recv + rdispl[rank_], send + sdispl[rank_], send_bytes[rank_]);
  ++posted_;
  in_flight_.push_back(ex);
  return ex;
}

bool Core::ready(Exchange& ex) {
  const int n = size_ - 1;
  if (ex.n_arrived == n) return true;
  for (int k = 0; k < n; ++k) {
    if (ex.arrived[k]) continue;
    int flag = 0;
    MPI_Status st;
    int rc = MPI_Test(&ex.recv[k], &flag, &st);
    if (rc != MPI_SUCCESS) {
      // a truncated message: the peer sent more than this rank's counts allow
      ex.arrived[k] = 1;
      ++ex.n_arrived;
      if (ex.count_error.empty())
        ex.count_error = "exchange " + std::to_string(ex.iteration) + ": peer " +
                         std::to_string(peers_[k]) + " sent more than the " +
                         std::to_string(ex.expect[k]) +
                         " bytes this rank expected (send and receive counts disagree)";
      continue;
    }
    if (!flag) continue;
    ex.arrived[k] = 1;
    ++ex.n_arrived;
    int got = 0;
    MPI_Get_count(&st, MPI_BYTE, &got);
    if (got != ex.expect[k] && ex.count_error.empty())
      ex.count_error = "exchange " + std::to_string(ex.iteration) + ": peer " +
                       std::to_string(peers_[k]) + " sent " + std::to_string(got) +
                       " bytes but this rank expected " + std::to_string(ex.expect[k]) +
                       " (send and receive counts disagree)";
  }
  return ex.n_arrived == n;
}

bool Core::sends_left(Exchange& ex) {
  const int n = size_ - 1;
  if (ex.n_left == n) return true;
  for (int k = 0; k < n; ++k) {
    if (ex.left[k]) continue;
    int flag = 0;
    MPI_Test(&ex.send[k], &flag, MPI_STATUS_IGNORE);
    if (flag) {
      ex.left[k] = 1;
      ++ex.n_left;
    }
  }
  return ex.n_left == n;
}

void Core::finish(const ExchangePtr& ex) {
  ex->done = true;
  ++completed_;
  if (!ex->count_error.empty()) {
    ex->error = std::make_exception_ptr(Error(ErrorKind::count, ex->count_error));
  } else if (ex->on_done) {
    ex->on_done();
  }
  ex->on_done = nullptr;
  // Sends leave on their own time (a large message leaves once its receiver copied it);
  // the buffers are kept until they have, in order.
  if (sending_.empty() && sends_left(*ex)) {
    ex->sent = true;
    ex->keep.reset();
  } else {
    sending_.push_back(ex);
  }
}

std::vector<int> Core::missing(const Exchange& ex) const {
  std::vector<int> out;
  for (int k = 0; k < size_ - 1; ++k)
    if (!ex.arrived[k]) out.push_back(peers_[k]);
  return out;
}

void Core::complete_front(Deadline deadline, double timeout_s, Lock* lock) {
  ExchangePtr ex = in_flight_.front();
  if (!ready(*ex)) {
    int64_t lag = posted_ - ex->iteration;
    auto t0 = Clock::now();
    bool ok = polite_wait([&] { return ex->done || closed_ || ready(*ex); },
                          step_deadline(deadline), lock, backoff_);
    check_open();
    if (ex->done) return;  // another thread completed it
    if (!ok) {
      double t = timeout_s > 0 ? timeout_s : timeout_s_;
      std::rethrow_exception(timeout_error(ex->iteration, missing(*ex), lag, t, "data"));
    }
    ex->wait_s = std::chrono::duration<double>(Clock::now() - t0).count();
    ex->lag = lag;
  }
  // only in-order completion pops: an exchange not done is still the oldest
  in_flight_.pop_front();
  finish(ex);
}

void Core::reap_sends() {
  while (!sending_.empty() && sends_left(*sending_.front())) {
    auto ex = sending_.front();
    sending_.pop_front();
    ex->sent = true;
    ex->keep.reset();
  }
}

void Core::flush_sends(int64_t upto, Deadline deadline, double timeout_s, Lock* lock) {
  while (!sending_.empty() && sending_.front()->iteration <= upto) {
    ExchangePtr ex = sending_.front();
    if (!sends_left(*ex)) {
      bool ok = polite_wait([&] { return ex->sent || closed_ || sends_left(*ex); },
                            step_deadline(deadline), lock, backoff_);
      check_open();
      if (ex->sent) continue;
      if (!ok) {
        std::vector<int> stuck;
        for (int k = 0; k < size_ - 1; ++k)
          if (!ex->left[k]) stuck.push_back(peers_[k]);
        double t = timeout_s > 0 ? timeout_s : timeout_s_;
        std::rethrow_exception(
            timeout_error(ex->iteration, stuck, posted_ - ex->iteration, t, "send"));
      }
    }
    sending_.pop_front();
    ex->sent = true;
    ex->keep.reset();
  }
}

void Core::poll() {
  check_open();
  while (!in_flight_.empty() && ready(*in_flight_.front())) {
    auto ex = in_flight_.front();
    in_flight_.pop_front();
    finish(ex);
  }
  reap_sends();
}

void Core::wait(int64_t iteration, double timeout_s, Lock* lock) {
  check_open();
  Deadline deadline = deadline_after(timeout_s);
  while (completed_ <= iteration && !in_flight_.empty()) complete_front(deadline, timeout_s, lock);
  flush_sends(iteration, deadline, timeout_s, lock);
}

void Core::drain(double timeout_s, Lock* lock) {
  check_open();
  double t = timeout_s > 0 ? timeout_s : timeout_s_;
  Deadline deadline = deadline_after(t);
  while (!in_flight_.empty()) complete_front(deadline, t, lock);
  flush_sends(INT64_MAX, deadline, t, lock);
}

void Core::abandon() {
  for (auto* q : {&in_flight_, &sending_}) {
    for (auto& ex : *q) {
      if (!ex->done) {
        for (int k = 0; k < size_ - 1; ++k)
          if (!ex->arrived[k] && ex->recv[k] != MPI_REQUEST_NULL) MPI_Cancel(&ex->recv[k]);
      }
      park(ex);
    }
    q->clear();
  }
  // persistent requests an abandoned exchange may still use stay allocated
  for (auto& p : persistent_)
    if (p) park(std::shared_ptr<void>(p.release(), [](void*) {}));
}

bool mpi_gone() {
  int fin = 0;
  MPI_Finalized(&fin);
  return fin != 0;
}

void Core::abort() {
  if (closed_) return;
  closed_ = true;
  if (mpi_gone()) return;
  abandon();
  // Freeing a communicator with pending operations is legal MPI: it goes once they finish.
  if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

void Core::close(double timeout_s, Lock* lock) {
  if (closed_) return;
  try {
    drain(timeout_s, lock);
  } catch (...) {
    abort();
    throw;
  }
  closed_ = true;
  for (auto& p : persistent_)
    if (p)
      for (auto& r : p->reqs) MPI_Request_free(&r);
  persistent_.clear();
  MPI_Comm_free(&comm_);
}

}  // namespace bls
