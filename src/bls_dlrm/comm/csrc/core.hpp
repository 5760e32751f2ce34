// The BLS alltoallv core: bounded lag synchronous exchanges over an MPI communicator.
//
// Semantics (DESIGN.md, "BLS alltoallv"): exchanges are numbered by post order; before
// exchange i is posted, exchange i - L - 1 is complete and its sends have left; completion
// is local (every peer's piece has arrived) and in order; an exchange whose data is here
// completes without waiting. At most L + 1 send and receive buffer sets are referenced.
// One message per peer and exchange, tagged by the slot i mod (L + 1) on a private
// duplicate of the communicator; a slot that sees the same counts and buffers twice gets
// persistent requests. Waiting tests, yields, then sleeps with back-off: never spins.
//
// Thread safety: the caller holds a Lock (a std::unique_lock on the owner's mutex) around
// every call; waits release it while they sleep.
#pragma once

#include <mpi.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace bls {

using Clock = std::chrono::steady_clock;
using Deadline = std::optional<Clock::time_point>;
using Lock = std::unique_lock<std::mutex>;

Deadline deadline_after(double seconds);  // <= 0 or NaN: none

// How a blocked rank waits: test and yield for spin_s, then sleep from first_sleep,
// doubling up to max_sleep (the defaults of the Python engine's Backoff).
struct Backoff {
  double spin_s = 5e-3;
  double first_sleep = 50e-6;
  double max_sleep = 500e-6;
};

// Calls done() until true (true) or the deadline passed (false); the lock is released
// while the thread yields or sleeps. CPU use while a peer is late: the sleeps' wake-ups.
bool polite_wait(const std::function<bool()>& done, Deadline deadline, Lock* lock,
                 const Backoff& backoff);

enum class ErrorKind { timeout, count, closed, thread, usage };

// Every error of the core and the backends. Python sees the matching exception class
// (BLSTimeoutError, BLSCountError, BLSClosedError, ...), a DistBackendError.
class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& what) : std::runtime_error(what), kind(kind) {}
  ErrorKind kind;
  // timeouts of an exchange: what the Python BLSTimeoutError carries
  int64_t iteration = -1;
  std::vector<int> peers;
  int64_t lag = 0;
  double timeout_s = 0;
  std::string waiting_for;  // "data", "send"; empty: not an exchange
  mutable void* py_cache = nullptr;  // the Python exception made from it (kept: same object)
};

std::exception_ptr timeout_error(int64_t iteration, std::vector<int> peers, int64_t lag,
                                 double timeout_s, const std::string& waiting_for);

struct Exchange {
  int64_t iteration = 0;
  int slot = 0;
  MPI_Request* recv = nullptr;  // P - 1 requests, by peer order
  MPI_Request* send = nullptr;
  std::vector<MPI_Request> own;  // non-persistent requests: recvs then sends
  std::vector<char> arrived, left;
  int n_arrived = 0, n_left = 0;
  std::vector<int64_t> expect;  // bytes expected from each peer (peer order)
  std::string count_error;
  bool done = false, sent = false;
  double wait_s = 0, send_wait_s = 0;
  int64_t lag = 0;
  int64_t bytes_sent = 0, bytes_received = 0;
  std::exception_ptr error;
  std::function<void()> on_done;  // runs once the data is here (copy out of a temporary)
  std::shared_ptr<void> keep;     // the buffers, until done and sent
};

using ExchangePtr = std::shared_ptr<Exchange>;

class Core {
 public:
  // Takes a duplicate of comm. timeout_s <= 0: wait forever.
  Core(MPI_Comm comm, int lag_bound, double timeout_s, bool persistent = true);
  ~Core();
  Core(const Core&) = delete;
  Core& operator=(const Core&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  int lag_bound() const { return lag_; }
  double timeout_s() const { return timeout_s_; }
  int64_t posted() const { return posted_; }
  int64_t completed() const { return completed_; }
  int in_flight() const { return static_cast<int>(in_flight_.size()); }
  int sending() const { return static_cast<int>(sending_.size()); }
  bool closed() const { return closed_; }
  int persistent_slots() const;

  // Start the next exchange: send_bytes[p] bytes at send + its displacement go to rank p,
  // recv_bytes[p] are expected from rank p. May first complete exchange i - L - 1.
  ExchangePtr post(const char* send, const std::vector<int64_t>& send_bytes, char* recv,
                   const std::vector<int64_t>& recv_bytes, std::shared_ptr<void> keep,
                   std::function<void()> on_done, Lock* lock);

  // Nonblocking: completes in order what has arrived, releases sends that have left.
  void poll();
  // Completes every exchange up to iteration and their sends; timeout_s < 0: the core's.
  void wait(int64_t iteration, double timeout_s, Lock* lock);
  // Everything in flight, sends included, within one timeout overall (timeout_s < 0: the
  // core's). Throws the timeout; what is left stays in flight.
  void drain(double timeout_s, Lock* lock);
  // Cancels the receives that have not matched; keeps every buffer referenced until the
  // process exits; closed afterwards.
  void abort();
  // drain, then free (or, if draining fails, abandon as abort does and rethrow).
  void close(double timeout_s, Lock* lock);

 private:
  void check_open() const;
  bool ready(Exchange& ex);
  bool sends_left(Exchange& ex);
  void finish(const ExchangePtr& ex);
  void complete_front(Deadline deadline, double timeout_s, Lock* lock);
  void flush_sends(int64_t upto, Deadline deadline, double timeout_s, Lock* lock);
  void reap_sends();
  void abandon();
  std::vector<int> missing(const Exchange& ex) const;
  Deadline step_deadline(Deadline call) const;

  struct Slot {
    const char* send = nullptr;
    char* recv = nullptr;
    std::vector<int64_t> send_bytes, recv_bytes;
    bool valid = false;
    bool same(const char* s, char* r, const std::vector<int64_t>& sb,
              const std::vector<int64_t>& rb) const {
      return valid && s == send && r == recv && sb == send_bytes && rb == recv_bytes;
    }
  };
  struct Persistent {
    Slot key;
    std::vector<MPI_Request> reqs;  // recvs then sends
  };

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1, lag_ = 0;
  double timeout_s_ = 0;
  bool persistent_on_ = true;
  bool closed_ = false;
  int64_t posted_ = 0, completed_ = 0;
  std::vector<int> peers_;  // rank + 1, rank + 2, ...: no rank is everybody's first
  std::deque<ExchangePtr> in_flight_, sending_;
  std::vector<Slot> seen_;
  std::vector<std::unique_ptr<Persistent>> persistent_;
  Backoff backoff_;
};

// Exchanges and requests given up on (abort, timeouts at close): kept until exit.
void park(std::shared_ptr<void> what);

// MPI_Finalize has run: destructors must not call MPI any more.
bool mpi_gone();

}  // namespace bls
