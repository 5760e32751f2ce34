// "bls" and "mpisync" as c10d::Backends over one MPI communicator each, on the BLS core.
//
// Both share every collective but the all-to-all (MPIBackend): reductions gather every
// rank's tensor and reduce in rank order (the same bits on every rank, every dtype),
// broadcast/barrier/gather/scatter over MPI's nonblocking collectives, send/recv that
// return at once. Every call first drives progress on the group's operations in flight;
// a blocked call tests, yields, then sleeps (core.hpp). The GIL is released by torch's
// bindings before any of this runs; nothing here touches Python but the error translator.
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>
#include <torch/extension.h>

#include <thread>

#include "core.hpp"

namespace py = pybind11;
using bls::Error;
using bls::ErrorKind;
using bls::Lock;

namespace {

// -- errors: C++ bls::Error -> the Python classes of bls_dlrm.comm -------------------------

PyObject* py_types[6] = {};  // timeout, count, closed, collective timeout, thread, other
enum { T_TIMEOUT, T_COUNT, T_CLOSED, T_COLLECTIVE, T_THREAD, T_OTHER };

PyObject* py_error_of(const Error& e) {
  if (e.py_cache) return static_cast<PyObject*>(e.py_cache);
  py::gil_scoped_acquire gil;
  py::object obj;
  auto type = [&](int k) {
    return py::reinterpret_borrow<py::object>(py_types[k] ? py_types[k] : PyExc_RuntimeError);
  };
  if (e.kind == ErrorKind::timeout && !e.waiting_for.empty())
    obj = type(T_TIMEOUT)(e.iteration, e.peers, e.lag,
                          e.timeout_s > 0 ? py::cast(e.timeout_s) : py::none(), e.waiting_for);
  else if (e.kind == ErrorKind::timeout)
    obj = type(T_COLLECTIVE)(e.what());
  else if (e.kind == ErrorKind::count)
    obj = type(T_COUNT)(e.what());
  else if (e.kind == ErrorKind::closed)
    obj = type(T_CLOSED)(e.what());
  else if (e.kind == ErrorKind::thread)
    obj = type(T_THREAD)(e.what());
  else
    obj = type(T_OTHER)(e.what());
  e.py_cache = obj.release().ptr();  // kept: the same exception every time it is raised
  return static_cast<PyObject*>(e.py_cache);
}

const char* thread_level_name(int level) {
  switch (level) {
    case MPI_THREAD_SINGLE: return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED: return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED: return "MPI_THREAD_SERIALIZED";
    default: return "MPI_THREAD_MULTIPLE";
  }
}

std::string seconds_text(double s) {
  std::ostringstream o;
  o << s;
  return o.str();
}

// -- tensors and counts ---------------------------------------------------------------------

bool overlaps(const at::Tensor& a, const at::Tensor& b) {
  if (a.numel() == 0 || b.numel() == 0) return false;
  if (a.is_contiguous() && b.is_contiguous()) {
    auto pa = reinterpret_cast<uintptr_t>(a.data_ptr());
    auto pb = reinterpret_cast<uintptr_t>(b.data_ptr());
    return pa < pb + b.nbytes() && pb < pa + a.nbytes();
  }
  return a.storage().data() == b.storage().data();
}

std::vector<int64_t> row_splits(const at::Tensor& t, const std::vector<int64_t>& splits, int P,
                                const char* what) {
  int64_t rows = t.size(0);
  if (splits.empty()) {
    TORCH_CHECK_VALUE(rows % P == 0, "all_to_all_single: ", what, " has ", rows,
                      " rows, not divisible by ", P,
                      " ranks (give split sizes for an uneven split)");
    return std::vector<int64_t>(P, rows / P);
  }
  TORCH_CHECK_VALUE((int)splits.size() == P, "all_to_all_single: ", splits.size(), " ", what,
                    " split sizes for ", P, " ranks");
  int64_t sum = 0;
  for (auto s : splits) {
    TORCH_CHECK_VALUE(s >= 0, "all_to_all_single: negative ", what, " split size in ", splits);
    sum += s;
  }
  TORCH_CHECK_VALUE(sum == rows, "all_to_all_single: ", what, " split sizes add up to ", sum,
                    ", ", what, " has ", rows, " rows");
  return splits;
}

// Per-peer byte counts of all_to_all_single, as gloo computes them: split sizes count rows
// of each tensor's first dimension, so input and output may differ in shape.
void a2a_bytes(const at::Tensor& out, const at::Tensor& in, const std::vector<int64_t>& osplit,
               const std::vector<int64_t>& isplit, int P, std::vector<int64_t>& sbytes,
               std::vector<int64_t>& rbytes) {
  TORCH_CHECK_TYPE(out.scalar_type() == in.scalar_type(), "all_to_all_single: output is ",
                   out.scalar_type(), ", input is ", in.scalar_type());
  TORCH_CHECK_VALUE(out.dim() > 0 && in.dim() > 0,
                    "all_to_all_single needs tensors with at least one dimension");
  if (osplit.empty() && isplit.empty())
    TORCH_CHECK_VALUE(out.numel() == in.numel(), "all_to_all_single: output has ", out.numel(),
                      " elements, input has ", in.numel(),
                      " (an equal split needs the same number of elements)");
  auto srows = row_splits(in, isplit, P, "input");
  auto rrows = row_splits(out, osplit, P, "output");
  int64_t item = in.element_size();
  int64_t in_row = in.size(0) ? in.numel() / in.size(0) : 1;
  int64_t out_row = out.size(0) ? out.numel() / out.size(0) : 1;
  if (in.size(0) == 0) {
    in_row = 1;
    for (int64_t d = 1; d < in.dim(); ++d) in_row *= in.size(d);
  }
  if (out.size(0) == 0) {
    out_row = 1;
    for (int64_t d = 1; d < out.dim(); ++d) out_row *= out.size(d);
  }
  sbytes.resize(P);
  rbytes.resize(P);
  for (int p = 0; p < P; ++p) {
    sbytes[p] = srows[p] * in_row * item;
    rbytes[p] = rrows[p] * out_row * item;
  }
}

at::Tensor reduce_stacked(const at::Tensor& stacked, const c10d::ReduceOp& op,
                          const std::string& backend) {
  using R = c10d::ReduceOp;
  int64_t P = stacked.size(0);
  auto fold = [&](auto fn) {
    at::Tensor out = stacked[0].clone();
    for (int64_t k = 1; k < P; ++k) fn(out, stacked[k]);
    return out;
  };
  switch (op.op_) {
    case R::SUM:
    case R::AVG: {
      at::Tensor out = fold([](at::Tensor& o, const at::Tensor& x) { o.add_(x); });
      if (op.op_ == R::AVG) {
        TORCH_CHECK_TYPE(out.is_floating_point() || out.is_complex(),
                         "ReduceOp.AVG needs a floating point tensor, got ", out.scalar_type());
        out.div_(P);
      }
      return out;
    }
    case R::PRODUCT:
      return fold([](at::Tensor& o, const at::Tensor& x) { o.mul_(x); });
    case R::MIN:
      return stacked.scalar_type() == at::kBool ? stacked.all(0) : stacked.amin(0);
    case R::MAX:
      return stacked.scalar_type() == at::kBool ? stacked.any(0) : stacked.amax(0);
    case R::BAND:
      return fold([](at::Tensor& o, const at::Tensor& x) { o.bitwise_and_(x); });
    case R::BOR:
      return fold([](at::Tensor& o, const at::Tensor& x) { o.bitwise_or_(x); });
    case R::BXOR:
      return fold([](at::Tensor& o, const at::Tensor& x) { o.bitwise_xor_(x); });
    default:
      TORCH_CHECK_VALUE(false, "the '", backend, "' backend does not support reduce op ",
                        static_cast<int>(op.op_));
  }
}

c10::intrusive_ptr<c10::ivalue::Future> future_of(const std::vector<at::Tensor>& result,
                                                  std::exception_ptr error) {
  auto fut = c10::make_intrusive<c10::ivalue::Future>(
      c10::ListType::create(c10::TensorType::get()));
  if (error)
    fut->setError(error);
  else
    fut->markCompleted(c10::IValue(result));
  return fut;
}

// The Future of a Work: waits it (no timeout), then holds its result or its error.
c10::intrusive_ptr<c10::ivalue::Future> future_after_wait(c10d::Work& work) {
  try {
    work.wait(kNoTimeout);
  } catch (...) {
    return future_of(work.result(), std::current_exception());
  }
  return future_of(work.result(), nullptr);
}

class MPIBackend;

// -- Work ----------------------------------------------------------------------------------

// An operation that finished (or failed) before its call returned; wait and is_completed
// drive the group's progress.
class DoneWork : public c10d::Work {
 public:
  DoneWork(c10::intrusive_ptr<MPIBackend> pg, std::vector<at::Tensor> result,
           c10d::OpType type, std::exception_ptr error = nullptr)
      : c10d::Work(-1, type), pg_(std::move(pg)), result_(std::move(result)), error_(error) {}
  bool isCompleted() override;
  bool isSuccess() const override { return !error_; }
  std::exception_ptr exception() const override { return error_; }
  std::vector<at::Tensor> result() override { return result_; }
  bool wait(std::chrono::milliseconds timeout) override;
  c10::intrusive_ptr<c10::ivalue::Future> getFuture() override;

 protected:
  c10::intrusive_ptr<MPIBackend> pg_;
  std::vector<at::Tensor> result_;
  std::exception_ptr error_;
};

// One MPI request in flight: wait completes it politely, within a deadline. The buffers
// MPI reads or writes stay referenced until it is done (or, given up, until exit).
class RequestWork : public DoneWork {
 public:
  RequestWork(c10::intrusive_ptr<MPIBackend> pg, MPI_Request req, const char* what,
              std::vector<at::Tensor> result, std::vector<at::Tensor> keep, c10d::OpType type,
              bool is_recv, bool collective, at::Tensor copy_to = {}, at::Tensor copy_from = {})
      : DoneWork(std::move(pg), std::move(result), type),
        req_(req),
        what_(what),
        keep_(std::move(keep)),
        is_recv_(is_recv),
        collective_(collective),
        copy_to_(std::move(copy_to)),
        copy_from_(std::move(copy_from)) {}
  bool isCompleted() override;
  bool isSuccess() const override { return !error_ && done_; }
  bool wait(std::chrono::milliseconds timeout) override;
  int sourceRank() const override { return status_.MPI_SOURCE; }

  bool test_locked();  // the group's lock is held
  void abandon_locked();
  void wait_locked(double timeout_s, Lock* lock);
  void wait_abandoned();  // MPI_Wait on a given-up collective (tests only)
  bool done() const { return done_; }
  bool collective() const { return collective_; }
  bool failed() const { return static_cast<bool>(error_); }

 private:
  MPI_Request req_;
  std::string what_;
  std::vector<at::Tensor> keep_;
  bool is_recv_, collective_;
  at::Tensor copy_to_, copy_from_;
  MPI_Status status_{};
  bool done_ = false;
  bool parked_ = false;
};

// -- the process groups --------------------------------------------------------------------

class MPIBackend : public c10d::Backend {
 public:
  MPIBackend(MPI_Comm comm, double timeout_s, std::string name)
      : c10d::Backend(rank_of(comm), size_of(comm)),
        comm_(dup(comm)),
        timeout_s_(timeout_s),
        name_(std::move(name)),
        owner_(std::this_thread::get_id()) {
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Query_thread(&thread_level_);
  }
  ~MPIBackend() override {
    if (!closed_ && !bls::mpi_gone()) closed_ = true;  // the communicator is left to exit
  }

  const std::string getBackendName() const override { return name_; }
  bool closed() const { return closed_; }
  double timeout_s() const { return timeout_s_; }
  int thread_level() const { return thread_level_; }

  // Every call starts here: the thread rule, the lock, a closed group refused, progress.
  Lock enter() {
    Lock lock = acquire();
    check_open();
    progress_locked();
    return lock;
  }
  Lock acquire() {
    if (thread_level_ < MPI_THREAD_SERIALIZED && std::this_thread::get_id() != owner_)
      throw Error(ErrorKind::thread,
                  "the '" + name_ + "' process group was called from a second thread, but MPI "
                  "runs at thread level " + thread_level_name(thread_level_) +
                  " (only the thread that made the group may call it); initialise MPI with "
                  "MPI_THREAD_MULTIPLE (mpi4py's default, mpi4py.rc.thread_level)");
    return Lock(mutex_);
  }
  void check_open() const {
    if (closed_) throw Error(closed_kind(), "the '" + name_ + "' process group was destroyed");
  }
  virtual ErrorKind closed_kind() const { return ErrorKind::closed; }
  void progress_if_open() {
    Lock lock = acquire();
    if (!closed_) progress_locked();
  }

  virtual void progress_locked() {
    for (auto it = pending_.begin(); it != pending_.end();) {
      if ((*it)->test_locked() || (*it)->failed())
        it = pending_.erase(it);
      else
        ++it;
    }
  }
  // What barrier completes first: the group's earlier asynchronous collectives.
  virtual void quiesce_locked(Lock* lock) {
    auto works = pending_;
    for (auto& w : works)
      if (w->collective() && !w->failed()) w->wait_locked(-1, lock);
  }

  void wait_request(MPI_Request* req, const char* what, Lock* lock) {
    int flag = 0;
    auto test = [&] {
      MPI_Test(req, &flag, MPI_STATUS_IGNORE);
      return flag != 0;
    };
    if (!bls::polite_wait(test, bls::deadline_after(timeout_s_), lock, backoff_))
      throw collective_timeout(what, timeout_s_);
  }
  Error collective_timeout(const std::string& what, double seconds) const {
    return Error(ErrorKind::timeout, "'" + name_ + "' " + what + " did not complete within " +
                                         seconds_text(seconds) + " s (rank " +
                                         std::to_string(getRank()) + " of " +
                                         std::to_string(getSize()) + ")");
  }

  c10::intrusive_ptr<MPIBackend> self() {
    return c10::intrusive_ptr<MPIBackend>::unsafe_reclaim_from_nonowning(this);
  }
  c10::intrusive_ptr<c10d::Work> done(std::vector<at::Tensor> result, c10d::OpType type) {
    return c10::make_intrusive<DoneWork>(self(), std::move(result), type);
  }

  // Every rank's copy of t, stacked in rank order (P, *shape).
  at::Tensor allgather_bytes(const at::Tensor& t, Lock* lock) {
    at::Tensor src = t.detach().contiguous();
    std::vector<int64_t> shape{getSize()};
    for (auto s : src.sizes()) shape.push_back(s);
    at::Tensor out = at::empty(shape, src.options());
    MPI_Request req;
    int n = static_cast<int>(src.nbytes());
    MPI_Iallgather(src.data_ptr(), n, MPI_BYTE, out.data_ptr(), n, MPI_BYTE, comm_, &req);
    wait_request(&req, "allgather", lock);
    return out;
  }
  void broadcast_in_place(const at::Tensor& t, int root, Lock* lock) {
    at::Tensor d = t.detach();
    at::Tensor buf = d.is_contiguous() ? d : d.contiguous();
    MPI_Request req;
    MPI_Ibcast(buf.data_ptr(), static_cast<int>(buf.nbytes()), MPI_BYTE, root, comm_, &req);
    wait_request(&req, "broadcast", lock);
    if (!buf.is_same(d)) d.copy_(buf);
  }

  c10::intrusive_ptr<c10d::Work> allreduce(std::vector<at::Tensor>& tensors,
                                           const c10d::AllreduceOptions& opts) override {
    Lock lock = enter();
    for (auto& t : tensors) t.detach().copy_(reduce_stacked(allgather_bytes(t, &lock), opts.reduceOp, name_));
    return done(tensors, c10d::OpType::ALLREDUCE);
  }
  c10::intrusive_ptr<c10d::Work> allreduce_coalesced(
      std::vector<at::Tensor>& tensors, const c10d::AllreduceCoalescedOptions& opts) override {
    c10d::AllreduceOptions o;
    o.reduceOp = opts.reduceOp;
    return allreduce(tensors, o);
  }
  c10::intrusive_ptr<c10d::Work> reduce(std::vector<at::Tensor>& tensors,
                                        const c10d::ReduceOptions& opts) override {
    Lock lock = enter();
    for (auto& t : tensors) {
      at::Tensor r = reduce_stacked(allgather_bytes(t, &lock), opts.reduceOp, name_);
      if (getRank() == opts.rootRank) t.detach().copy_(r);
    }
    return done(tensors, c10d::OpType::REDUCE);
  }
  c10::intrusive_ptr<c10d::Work> allgather(std::vector<std::vector<at::Tensor>>& outputs,
                                           std::vector<at::Tensor>& inputs,
                                           const c10d::AllgatherOptions&) override {
    Lock lock = enter();
    std::vector<at::Tensor> result;
    for (size_t i = 0; i < inputs.size(); ++i) {
      TORCH_CHECK_VALUE((int)outputs[i].size() == getSize(), "all_gather needs ", getSize(),
                        " output tensors");
      at::Tensor stacked = allgather_bytes(inputs[i], &lock);
      for (int p = 0; p < getSize(); ++p) {
        outputs[i][p].detach().copy_(stacked[p]);
        result.push_back(outputs[i][p]);
      }
    }
    return done(result, c10d::OpType::ALLGATHER);
  }
  c10::intrusive_ptr<c10d::Work> _allgather_base(at::Tensor& output, at::Tensor& input,
                                                 const c10d::AllgatherOptions&) override {
    Lock lock = enter();
    TORCH_CHECK_VALUE(output.numel() == input.numel() * getSize(),
                      "all_gather_into_tensor: output has ", output.numel(),
                      " elements, needs ", input.numel() * getSize());
    output.detach().copy_(allgather_bytes(input, &lock).view(output.sizes()));
    return done({output}, c10d::OpType::_ALLGATHER_BASE);
  }
  c10::intrusive_ptr<c10d::Work> gather(std::vector<std::vector<at::Tensor>>& outputs,
                                        std::vector<at::Tensor>& inputs,
                                        const c10d::GatherOptions& opts) override {
    Lock lock = enter();
    at::Tensor stacked = allgather_bytes(inputs[0], &lock);
    if (getRank() == opts.rootRank)
      for (int p = 0; p < getSize(); ++p) outputs[0][p].detach().copy_(stacked[p]);
    return done(inputs, c10d::OpType::GATHER);
  }
  c10::intrusive_ptr<c10d::Work> scatter(std::vector<at::Tensor>& outputs,
                                         std::vector<std::vector<at::Tensor>>& inputs,
                                         const c10d::ScatterOptions& opts) override {
    Lock lock = enter();
    at::Tensor out = outputs[0];
    at::Tensor send;
    if (getRank() == opts.rootRank) {
      std::vector<at::Tensor> parts;
      for (auto& t : inputs[0]) parts.push_back(t.detach().contiguous());
      send = at::stack(parts);
    } else {
      std::vector<int64_t> shape{getSize()};
      for (auto s : out.sizes()) shape.push_back(s);
      send = at::empty(shape, out.options());
    }
    broadcast_in_place(send, static_cast<int>(opts.rootRank), &lock);
    out.detach().copy_(send[getRank()]);
    return done({out}, c10d::OpType::SCATTER);
  }
  c10::intrusive_ptr<c10d::Work> reduce_scatter(std::vector<at::Tensor>& outputs,
                                                std::vector<std::vector<at::Tensor>>& inputs,
                                                const c10d::ReduceScatterOptions& opts) override {
    Lock lock = enter();
    for (size_t i = 0; i < outputs.size(); ++i) {
      std::vector<at::Tensor> parts;
      for (auto& t : inputs[i]) parts.push_back(t.detach().contiguous());
      at::Tensor reduced =
          reduce_stacked(allgather_bytes(at::stack(parts), &lock), opts.reduceOp, name_);
      outputs[i].detach().copy_(reduced[getRank()]);
    }
    return done(outputs, c10d::OpType::REDUCE_SCATTER);
  }
  c10::intrusive_ptr<c10d::Work> _reduce_scatter_base(
      at::Tensor& output, at::Tensor& input, const c10d::ReduceScatterOptions& opts) override {
    Lock lock = enter();
    at::Tensor reduced = reduce_stacked(allgather_bytes(input, &lock), opts.reduceOp, name_);
    std::vector<int64_t> shape{getSize()};
    for (auto s : output.sizes()) shape.push_back(s);
    output.detach().copy_(reduced.reshape(shape)[getRank()]);
    return done({output}, c10d::OpType::_REDUCE_SCATTER_BASE);
  }
  c10::intrusive_ptr<c10d::Work> broadcast(std::vector<at::Tensor>& tensors,
                                           const c10d::BroadcastOptions& opts) override {
    Lock lock = enter();
    for (auto& t : tensors) broadcast_in_place(t, static_cast<int>(opts.rootRank), &lock);
    return done(tensors, c10d::OpType::BROADCAST);
  }
  // Like gloo's: the group's earlier asynchronous collectives complete first.
  c10::intrusive_ptr<c10d::Work> barrier(const c10d::BarrierOptions&) override {
    Lock lock = enter();
    quiesce_locked(&lock);
    MPI_Request req;
    MPI_Ibarrier(comm_, &req);
    wait_request(&req, "barrier", &lock);
    return done({}, c10d::OpType::BARRIER);
  }
  // send and recv return at once (ranks that all isend first must not deadlock).
  c10::intrusive_ptr<c10d::Work> send(std::vector<at::Tensor>& tensors, int dst,
                                      int tag) override {
    Lock lock = enter();
    at::Tensor buf = tensors[0].detach().contiguous();
    MPI_Request req;
    MPI_Isend(buf.data_ptr(), static_cast<int>(buf.nbytes()), MPI_BYTE, dst, tag, comm_, &req);
    return track(c10::make_intrusive<RequestWork>(self(), req, "send", tensors,
                                                  std::vector<at::Tensor>{buf},
                                                  c10d::OpType::SEND, false, false));
  }
  c10::intrusive_ptr<c10d::Work> recv(std::vector<at::Tensor>& tensors, int src,
                                      int tag) override {
    Lock lock = enter();
    return post_recv(tensors, src, tag, c10d::OpType::RECV);
  }
  c10::intrusive_ptr<c10d::Work> recvAnysource(std::vector<at::Tensor>& tensors,
                                               int tag) override {
    Lock lock = enter();
    return post_recv(tensors, MPI_ANY_SOURCE, tag, c10d::OpType::RECVANYSOURCE);
  }

  c10::intrusive_ptr<c10d::Work> track(c10::intrusive_ptr<RequestWork> w) {
    pending_.push_back(w);
    return w;
  }

  void shutdown() override {
    Lock lock = acquire();
    if (closed_) return;
    try {
      close_locked(&lock);
    } catch (...) {
      finish_close();
      throw;
    }
    finish_close();
  }
  void abort() override {
    Lock lock = acquire();
    if (closed_) return;
    closed_ = true;
    abort_locked();
    for (auto& w : pending_)
      if (!w->done()) w->abandon_locked();
    pending_.clear();
    // the communicator is left to the process exit: operations may still use it
  }

 protected:
  virtual void close_locked(Lock* lock) {
    MPIBackend::quiesce_locked(lock);  // the collectives in flight (a subclass has more)
    for (auto& w : pending_)
      if (!w->test_locked()) w->abandon_locked();
  }
  virtual void abort_locked() {}
  void finish_close() {
    closed_ = true;
    pending_.clear();
    if (comm_ != MPI_COMM_NULL && !bls::mpi_gone()) MPI_Comm_free(&comm_);
    comm_ = MPI_COMM_NULL;
  }

  c10::intrusive_ptr<c10d::Work> post_recv(std::vector<at::Tensor>& tensors, int src, int tag,
                                           c10d::OpType type) {
    at::Tensor t = tensors[0];
    at::Tensor buf = t.detach();
    bool copy = !buf.is_contiguous();
    if (copy) buf = at::empty_like(buf, at::MemoryFormat::Contiguous);
    MPI_Request req;
    MPI_Irecv(buf.data_ptr(), static_cast<int>(buf.nbytes()), MPI_BYTE, src, tag, comm_, &req);
    return track(c10::make_intrusive<RequestWork>(
        self(), req, "recv", tensors, std::vector<at::Tensor>{buf}, type, true, false,
        copy ? t : at::Tensor(), copy ? buf : at::Tensor()));
  }

  static MPI_Comm dup(MPI_Comm c) {
    MPI_Comm out = MPI_COMM_NULL;
    if (MPI_Comm_dup(c, &out) != MPI_SUCCESS) throw Error(ErrorKind::usage, "MPI_Comm_dup failed");
    return out;
  }
  static int rank_of(MPI_Comm c) {
    int r = 0;
    MPI_Comm_rank(c, &r);
    return r;
  }
  static int size_of(MPI_Comm c) {
    int s = 0;
    MPI_Comm_size(c, &s);
    return s;
  }

  MPI_Comm comm_;
  double timeout_s_;
  std::string name_;
  std::thread::id owner_;
  int thread_level_ = MPI_THREAD_SINGLE;
  std::mutex mutex_;
  bool closed_ = false;
  std::deque<c10::intrusive_ptr<RequestWork>> pending_;
  bls::Backoff backoff_;
};

// -- Work methods ---------------------------------------------------------------------------

bool DoneWork::isCompleted() {
  pg_->progress_if_open();
  return true;
}

bool DoneWork::wait(std::chrono::milliseconds) {
  pg_->progress_if_open();
  if (error_) std::rethrow_exception(error_);
  return true;
}

c10::intrusive_ptr<c10::ivalue::Future> DoneWork::getFuture() {
  return future_after_wait(*this);
}

bool RequestWork::test_locked() {
  if (done_ || parked_) return done_;
  int flag = 0;
  MPI_Test(&req_, &flag, &status_);
  if (flag) {
    done_ = true;
    if (copy_to_.defined()) copy_to_.detach().copy_(copy_from_);
    keep_.clear();
    copy_to_ = copy_from_ = at::Tensor();
  }
  return done_;
}

void RequestWork::abandon_locked() {
  if (parked_ || done_) return;
  parked_ = true;
  if (is_recv_) MPI_Cancel(&req_);  // already matched: it completes all the same
  auto kept = std::make_shared<std::vector<at::Tensor>>(keep_);
  bls::park(kept);
}

void RequestWork::wait_locked(double timeout_s, Lock* lock) {
  if (error_) std::rethrow_exception(error_);
  if (done_) return;
  double seconds = timeout_s > 0 ? timeout_s : pg_->timeout_s();
  bool ok = bls::polite_wait([&] { return test_locked(); }, bls::deadline_after(seconds), lock,
                             bls::Backoff());
  if (!ok) {
    abandon_locked();
    error_ = std::make_exception_ptr(pg_->collective_timeout(what_, seconds));
    std::rethrow_exception(error_);
  }
}

bool RequestWork::wait(std::chrono::milliseconds timeout) {
  Lock lock = pg_->acquire();
  if (error_) std::rethrow_exception(error_);
  if (!done_) {
    if (!pg_->closed()) pg_->progress_locked();
    wait_locked(timeout.count() > 0 ? timeout.count() / 1000.0 : -1, &lock);
  }
  return true;
}

bool RequestWork::isCompleted() {
  Lock lock = pg_->acquire();
  if (!pg_->closed()) pg_->progress_locked();
  if (!done_ && !error_) test_locked();
  return done_ || error_;
}

void RequestWork::wait_abandoned() {
  Lock lock = pg_->acquire();
  if (parked_ && !done_ && !is_recv_) {
    MPI_Wait(&req_, MPI_STATUS_IGNORE);
    done_ = true;
  }
}

// -- "bls" ------------------------------------------------------------------------------

class BLSBackend;

// A posted BLS exchange; wait completes it (and the older ones) in order.
class BLSWork : public c10d::Work {
 public:
  BLSWork(c10::intrusive_ptr<BLSBackend> pg, bls::ExchangePtr ex, at::Tensor output)
      : c10d::Work(-1, c10d::OpType::ALLTOALL_BASE), pg_(std::move(pg)), ex_(std::move(ex)),
        output_(std::move(output)) {}
  bool isCompleted() override;
  bool isSuccess() const override {
    return !error_ && !ex_->error && ex_->done && ex_->sent;
  }
  std::exception_ptr exception() const override { return error_ ? error_ : ex_->error; }
  std::vector<at::Tensor> result() override { return {output_}; }
  bool wait(std::chrono::milliseconds timeout) override;
  c10::intrusive_ptr<c10::ivalue::Future> getFuture() override {
    return future_after_wait(*this);
  }
  const bls::ExchangePtr& exchange() const { return ex_; }

 private:
  c10::intrusive_ptr<BLSBackend> pg_;
  bls::ExchangePtr ex_;
  at::Tensor output_;
  std::exception_ptr error_;
};

struct Buffers {  // what an exchange's requests point into
  at::Tensor send, recv, output;
};

class BLSBackend : public MPIBackend {
 public:
  BLSBackend(MPI_Comm comm, int lag_bound, double timeout_s, bool persistent)
      : MPIBackend(comm, timeout_s, "bls") {
    core_ = std::make_unique<bls::Core>(comm, lag_bound, timeout_s, persistent);
  }
  ~BLSBackend() override {
    if (core_ && !core_->closed()) core_.release();  // in-flight buffers: left to exit
  }

  bls::Core& core() {
    if (closed_ || !core_ || core_->closed())
      throw Error(ErrorKind::closed, "the 'bls' process group was destroyed");
    return *core_;
  }
  bls::Core* core_or_null() { return core_.get(); }

  void progress_locked() override {
    core_->poll();
    if (!pending_.empty()) MPIBackend::progress_locked();
  }
  void quiesce_locked(Lock* lock) override {
    core().drain(-1, lock);
    MPIBackend::quiesce_locked(lock);
  }

  c10::intrusive_ptr<c10d::Work> alltoall_base(at::Tensor& output, at::Tensor& input,
                                               std::vector<int64_t>& output_splits,
                                               std::vector<int64_t>& input_splits,
                                               const c10d::AllToAllOptions&) override {
    Lock lock = acquire();
    check_open();
    std::vector<int64_t> sbytes, rbytes;
    a2a_bytes(output, input, output_splits, input_splits, getSize(), sbytes, rbytes);
    core_->poll();
    auto bufs = std::make_shared<Buffers>();
    bufs->send = input;
    if (overlaps(output, input) || !input.is_contiguous())
      bufs->send = input.contiguous().clone();  // receives would overwrite what is still sent
    bufs->recv = output;
    std::function<void()> on_done;
    if (!output.is_contiguous()) {
      bufs->recv = at::empty_like(output, at::MemoryFormat::Contiguous);
      bufs->output = output;
      Buffers* b = bufs.get();
      on_done = [b] { b->output.detach().copy_(b->recv); };
    }
    auto ex = core_->post(static_cast<const char*>(bufs->send.data_ptr()), sbytes,
                          static_cast<char*>(bufs->recv.data_ptr()), rbytes, bufs,
                          std::move(on_done), &lock);
    return c10::make_intrusive<BLSWork>(
        c10::intrusive_ptr<BLSBackend>::unsafe_reclaim_from_nonowning(this), ex, output);
  }

  c10::intrusive_ptr<c10d::Work> alltoall(std::vector<at::Tensor>& outputs,
                                          std::vector<at::Tensor>& inputs,
                                          const c10d::AllToAllOptions&) override {
    Lock lock = enter();
    check_lists(outputs, inputs);
    std::vector<at::Tensor> flat;
    std::vector<int64_t> sbytes, rbytes;
    int64_t rtotal = 0;
    for (auto& t : inputs) {
      flat.push_back(t.detach().reshape(-1));
      sbytes.push_back(t.nbytes());
    }
    for (auto& t : outputs) {
      rbytes.push_back(t.nbytes());
      rtotal += t.numel();
    }
    auto bufs = std::make_shared<Buffers>();
    bufs->send = at::cat(flat);
    bufs->recv = at::empty({rtotal}, inputs[0].options());
    auto ex = core_->post(static_cast<const char*>(bufs->send.data_ptr()), sbytes,
                          static_cast<char*>(bufs->recv.data_ptr()), rbytes, bufs, nullptr,
                          &lock);
    core_->wait(ex->iteration, -1, &lock);
    if (ex->error) std::rethrow_exception(ex->error);
    int64_t at_ = 0;
    for (auto& out : outputs) {
      out.detach().copy_(bufs->recv.narrow(0, at_, out.numel()).view(out.sizes()));
      at_ += out.numel();
    }
    return done(outputs, c10d::OpType::ALLTOALL);
  }

  void check_lists(const std::vector<at::Tensor>& outputs, const std::vector<at::Tensor>& inputs) {
    TORCH_CHECK_VALUE((int)outputs.size() == getSize() && (int)inputs.size() == getSize(),
                      "all_to_all needs ", getSize(), " input and ", getSize(),
                      " output tensors");
    for (auto* v : {&inputs, &outputs})
      for (auto& t : *v)
        TORCH_CHECK_TYPE(t.scalar_type() == inputs[0].scalar_type(), "all_to_all: mixed dtypes ",
                         inputs[0].scalar_type(), " and ", t.scalar_type());
  }

 protected:
  void close_locked(Lock* lock) override {
    // one timeout for the whole drain; what is left is abandoned (buffers kept)
    core_->close(-1, lock);
    MPIBackend::close_locked(lock);
  }
  void abort_locked() override { core_->abort(); }

  std::unique_ptr<bls::Core> core_;
};

bool BLSWork::wait(std::chrono::milliseconds timeout) {
  Lock lock = pg_->acquire();
  if (error_) std::rethrow_exception(error_);
  if (!(pg_->closed() && ex_->done && ex_->sent)) {
    try {
      bls::Core& core = pg_->core();
      core.poll();  // every call drives progress, on every exchange of the group
      if (!(ex_->done && ex_->sent))
        core.wait(ex_->iteration, timeout.count() > 0 ? timeout.count() / 1000.0 : -1, &lock);
    } catch (...) {
      error_ = std::current_exception();
      throw;
    }
  }
  if (ex_->error) {
    error_ = ex_->error;
    std::rethrow_exception(error_);
  }
  return true;
}

bool BLSWork::isCompleted() {
  Lock lock = pg_->acquire();
  if (error_ || ex_->error) return true;
  if (!pg_->closed() && pg_->core_or_null() && !pg_->core_or_null()->closed()) pg_->core().poll();
  return ex_->done && ex_->sent;
}

// -- "mpisync" ---------------------------------------------------------------------------

// MPI's own Alltoallv: blocking for async_op=False (MPI's wait, as torch's MPI backend),
// Ialltoallv completed by a polite wait for async_op=True.
class MPISyncBackend : public MPIBackend {
 public:
  MPISyncBackend(MPI_Comm comm, double timeout_s) : MPIBackend(comm, timeout_s, "mpisync") {}
  ErrorKind closed_kind() const override { return ErrorKind::usage; }

  c10::intrusive_ptr<c10d::Work> alltoall_base(at::Tensor& output, at::Tensor& input,
                                               std::vector<int64_t>& output_splits,
                                               std::vector<int64_t>& input_splits,
                                               const c10d::AllToAllOptions& opts) override {
    Lock lock = enter();
    std::vector<int64_t> sbytes, rbytes;
    a2a_bytes(output, input, output_splits, input_splits, getSize(), sbytes, rbytes);
    int me = getRank();
    TORCH_CHECK_VALUE(sbytes[me] == rbytes[me], "all_to_all_single: rank ", me, " sends ",
                      sbytes[me] / input.element_size(), " elements to itself but expects ",
                      rbytes[me] / input.element_size());
    at::Tensor send = input;
    if (overlaps(output, input) || !input.is_contiguous()) send = input.contiguous().clone();
    at::Tensor recv = output;
    bool copy = !output.is_contiguous();
    if (copy) recv = at::empty_like(output, at::MemoryFormat::Contiguous);
    return alltoallv(send, sbytes, recv, rbytes, {output}, copy ? output : at::Tensor(),
                     opts.asyncOp, &lock);
  }

  c10::intrusive_ptr<c10d::Work> alltoall(std::vector<at::Tensor>& outputs,
                                          std::vector<at::Tensor>& inputs,
                                          const c10d::AllToAllOptions&) override {
    Lock lock = enter();
    TORCH_CHECK_VALUE((int)outputs.size() == getSize() && (int)inputs.size() == getSize(),
                      "all_to_all needs ", getSize(), " input and ", getSize(),
                      " output tensors");
    for (auto* v : {&inputs, &outputs})
      for (auto& t : *v)
        TORCH_CHECK_TYPE(t.scalar_type() == inputs[0].scalar_type(), "all_to_all: mixed dtypes ",
                         inputs[0].scalar_type(), " and ", t.scalar_type());
    std::vector<at::Tensor> flat;
    std::vector<int64_t> sbytes, rbytes;
    int64_t rtotal = 0;
    for (auto& t : inputs) {
      flat.push_back(t.detach().reshape(-1));
      sbytes.push_back(t.nbytes());
    }
    for (auto& t : outputs) {
      rbytes.push_back(t.nbytes());
      rtotal += t.numel();
    }
    at::Tensor send = at::cat(flat);
    at::Tensor recv = at::empty({rtotal}, inputs[0].options());
    alltoallv(send, sbytes, recv, rbytes, {}, at::Tensor(), false, &lock);
    int64_t at_ = 0;
    for (auto& out : outputs) {
      out.detach().copy_(recv.narrow(0, at_, out.numel()).view(out.sizes()));
      at_ += out.numel();
    }
    return done(outputs, c10d::OpType::ALLTOALL);
  }

 private:
  c10::intrusive_ptr<c10d::Work> alltoallv(const at::Tensor& send,
                                           const std::vector<int64_t>& sbytes,
                                           const at::Tensor& recv,
                                           const std::vector<int64_t>& rbytes,
                                           std::vector<at::Tensor> result, at::Tensor copy_to,
                                           bool async_op, Lock* lock) {
    const int P = getSize();
    std::vector<int> sc(P), sd(P), rc(P), rd(P);
    int64_t s = 0, r = 0;
    for (int p = 0; p < P; ++p) {
      TORCH_CHECK_VALUE(s + sbytes[p] <= INT32_MAX && r + rbytes[p] <= INT32_MAX,
                        "all_to_all_single: more than 2 GiB");
      sc[p] = (int)sbytes[p];
      sd[p] = (int)s;
      rc[p] = (int)rbytes[p];
      rd[p] = (int)r;
      s += sbytes[p];
      r += rbytes[p];
    }
    if (!async_op) {
      int rc_ = MPI_Alltoallv(send.data_ptr(), sc.data(), sd.data(), MPI_BYTE, recv.data_ptr(),
                              rc.data(), rd.data(), MPI_BYTE, comm_);
      TORCH_CHECK(rc_ == MPI_SUCCESS, "MPI_Alltoallv failed");
      if (copy_to.defined()) copy_to.detach().copy_(recv);
      return done(result, c10d::OpType::ALLTOALL_BASE);
    }
    MPI_Request req;
    MPI_Ialltoallv(send.data_ptr(), sc.data(), sd.data(), MPI_BYTE, recv.data_ptr(), rc.data(),
                   rd.data(), MPI_BYTE, comm_, &req);
    auto w = c10::make_intrusive<RequestWork>(
        self(), req, "all_to_all", result, std::vector<at::Tensor>{send, recv},
        c10d::OpType::ALLTOALL_BASE, false, true, copy_to,
        copy_to.defined() ? recv : at::Tensor());
    return track(w);
  }
};

// Work.exception(): the Python exception that wait() raised (the same object), not
// torch's generic RuntimeError of its message.
py::object exception_of(const c10d::Work& w) {
  std::exception_ptr e = w.exception();
  if (!e) return py::none();
  try {
    std::rethrow_exception(e);
  } catch (const Error& er) {
    return py::reinterpret_borrow<py::object>(py_error_of(er));
  } catch (const std::exception& ex) {
    return py::reinterpret_borrow<py::object>(PyExc_RuntimeError)(ex.what());
  }
}

// The dispatch floor (benchmarks only): an all_to_all_single that returns a completed
// Work at once, so a figure can be split into torch's own cost and the backend's.
class FloorBackend : public MPIBackend {
 public:
  explicit FloorBackend(MPI_Comm comm) : MPIBackend(comm, 0, "blsfloor") {}
  c10::intrusive_ptr<c10d::Work> alltoall_base(at::Tensor& output, at::Tensor&,
                                               std::vector<int64_t>&, std::vector<int64_t>&,
                                               const c10d::AllToAllOptions&) override {
    return done({output}, c10d::OpType::ALLTOALL_BASE);
  }
};

MPI_Comm comm_at(uintptr_t address) { return *reinterpret_cast<MPI_Comm*>(address); }

std::string library_version() {
  char text[MPI_MAX_LIBRARY_VERSION_STRING];
  int n = 0;
  MPI_Get_library_version(text, &n);
  return std::string(text, n);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "The BLS alltoallv core and the c10d backends 'bls' and 'mpisync'.";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      PyObject* obj = py_error_of(e);
      PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(obj)), obj);
    }
  });
  m.def(
      "set_error_types",
      [](py::object timeout, py::object count, py::object closed, py::object collective,
         py::object thread, py::object other) {
        py::object all[6] = {timeout, count, closed, collective, thread, other};
        for (int k = 0; k < 6; ++k) py_types[k] = all[k].release().ptr();
      },
      "The Python classes of the native errors (timeout, count, closed, collective "
      "timeout, thread, other).");
  m.def("mpi_library_version", &library_version, "MPI_Get_library_version of the linked MPI.");
  m.def("thread_level", [] {
    int level = 0;
    MPI_Query_thread(&level);
    return level;
  });
  m.def(
      "wait_politely",
      [](double seconds, double timeout_s) {
        // A wait on a condition that never holds: for tests of the back-off's CPU use.
        auto until = bls::deadline_after(seconds);
        py::gil_scoped_release nogil;
        return bls::polite_wait([&] { return bls::Clock::now() > *until; },
                                bls::deadline_after(timeout_s), nullptr, bls::Backoff());
      },
      py::arg("seconds"), py::arg("timeout_s") = 0.0);

  py::class_<bls::Exchange, std::shared_ptr<bls::Exchange>>(m, "ExchangeState")
      .def_readonly("iteration", &bls::Exchange::iteration)
      .def_readonly("done", &bls::Exchange::done)
      .def_readonly("sent", &bls::Exchange::sent)
      .def_readonly("lag", &bls::Exchange::lag)
      .def_readonly("wait_s", &bls::Exchange::wait_s)
      .def_readonly("send_wait_s", &bls::Exchange::send_wait_s)
      .def_readonly("bytes_sent", &bls::Exchange::bytes_sent)
      .def_readonly("bytes_received", &bls::Exchange::bytes_received)
      // the statistics are on the exchange itself (``work.exchange.stats.lag``)
      .def_property_readonly("stats", [](std::shared_ptr<bls::Exchange> e) { return e; });

  py::class_<DoneWork, c10d::Work, c10::intrusive_ptr<DoneWork>>(m, "DoneWork")
      .def("exception", &exception_of);
  py::class_<RequestWork, DoneWork, c10::intrusive_ptr<RequestWork>>(m, "RequestWork")
      .def_property_readonly("done", &RequestWork::done)
      .def("_wait_abandoned", &RequestWork::wait_abandoned,
           py::call_guard<py::gil_scoped_release>());
  py::class_<BLSWork, c10d::Work, c10::intrusive_ptr<BLSWork>>(m, "BLSWork")
      .def_property_readonly("exchange", &BLSWork::exchange)
      .def("exception", &exception_of);

  py::class_<MPIBackend, c10d::Backend, c10::intrusive_ptr<MPIBackend>>(m, "MPIBackend")
      .def_property_readonly("closed", &MPIBackend::closed)
      .def_property_readonly("timeout_s", &MPIBackend::timeout_s)
      .def_property_readonly("thread_level", &MPIBackend::thread_level);

  py::class_<BLSBackend, MPIBackend, c10::intrusive_ptr<BLSBackend>>(m, "BLSBackend")
      .def(py::init([](uintptr_t comm, int lag_bound, double timeout_s, bool persistent) {
             return c10::make_intrusive<BLSBackend>(comm_at(comm), lag_bound, timeout_s,
                                                    persistent);
           }),
           py::arg("comm_address"), py::arg("lag_bound"), py::arg("timeout_s"),
           py::arg("persistent") = true)
      .def_property_readonly("lag_bound", [](BLSBackend& b) { return b.core().lag_bound(); })
      .def_property_readonly("transport", [](BLSBackend&) { return "p2p"; })
      .def_property_readonly("in_flight", [](BLSBackend& b) {
        auto* c = b.core_or_null();
        return c && !c->closed() ? c->in_flight() : 0;
      })
      .def_property_readonly("sending", [](BLSBackend& b) { return b.core().sending(); })
      .def_property_readonly("posted", [](BLSBackend& b) {
        auto* c = b.core_or_null();
        return c ? c->posted() : 0;
      })
      .def_property_readonly("completed", [](BLSBackend& b) { return b.core().completed(); })
      .def_property_readonly("persistent_slots",
                             [](BLSBackend& b) { return b.core().persistent_slots(); });

  py::class_<FloorBackend, MPIBackend, c10::intrusive_ptr<FloorBackend>>(m, "FloorBackend")
      .def(py::init([](uintptr_t comm) { return c10::make_intrusive<FloorBackend>(comm_at(comm)); }),
           py::arg("comm_address"));

  py::class_<MPISyncBackend, MPIBackend, c10::intrusive_ptr<MPISyncBackend>>(m, "MPISyncBackend")
      .def(py::init([](uintptr_t comm, double timeout_s) {
             return c10::make_intrusive<MPISyncBackend>(comm_at(comm), timeout_s);
           }),
           py::arg("comm_address"), py::arg("timeout_s"));
}
