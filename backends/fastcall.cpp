// One prepared kernel launch whose tensors change from call to call, checked and launched in
// C++ (backends/fastcall.py says when and why). A call checks each argument against the
// metadata of the call the plan was made from (Python type, sizes, strides, dtype,
// device, requires_grad, conj / neg bits; None where that call had None), the current CUDA
// device and, where the kernel was specialized on it, each pointer's 16-byte alignment. A
// mismatch returns None and launches nothing: the caller then takes its full Python path.
#include <Python.h>
#include <dlfcn.h>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/fill.h>
#include <ATen/ops/zeros.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

namespace py = pybind11;

namespace {

// the two driver entry points, from libcuda at run time: the module builds and its checks run
// on machines without a GPU
using LaunchFn = int (*)(void*, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                         unsigned, void*, void**, void**);
using CtxDeviceFn = int (*)(int*);

struct Driver {
  LaunchFn launch = nullptr;
  CtxDeviceFn ctx_device = nullptr;
};

const Driver& driver() {
  static Driver d;
  static std::once_flag once;
  std::call_once(once, [] {
    void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (h != nullptr) {
      d.launch = reinterpret_cast<LaunchFn>(dlsym(h, "cuLaunchKernel"));
      d.ctx_device = reinterpret_cast<CtxDeviceFn>(dlsym(h, "cuCtxGetDevice"));
    }
  });
  return d;
}

constexpr size_t kMaxCells = 96;  // kernel parameters (the step kernels have at most ~45)

// torch.Tensor and torch.nn.Parameter (a model's D and dt_bias): subclasses that behave as
// plain tensors. Other subclasses may override anything, so they keep the Python path.
bool plain_tensor_type(PyTypeObject* t) {
  static PyTypeObject* param = [] {
    py::object p = py::module_::import("torch.nn").attr("Parameter");
    return reinterpret_cast<PyTypeObject*>(p.release().ptr());
  }();
  return t == reinterpret_cast<PyTypeObject*>(THPVariableClass) || t == param;
}

struct Expect {
  bool none = true;
  PyTypeObject* type = nullptr;
  std::vector<int64_t> sizes, strides;
  c10::ScalarType dtype = c10::ScalarType::Undefined;
  c10::Device device{c10::kCPU};
  bool requires_grad = false, conj = false, neg = false;

  static Expect of(PyObject* o) {
    Expect e;
    if (o == Py_None) return e;
    if (!THPVariable_Check(o) || !plain_tensor_type(Py_TYPE(o)))
      throw std::invalid_argument("not a torch.Tensor or torch.nn.Parameter");
    const at::Tensor& t = THPVariable_Unpack(o);
    if (t.layout() != c10::kStrided) throw std::invalid_argument("not a strided tensor");
    e.none = false;
    e.type = Py_TYPE(o);
    e.sizes = t.sizes().vec();
    e.strides = t.strides().vec();
    e.dtype = t.scalar_type();
    e.device = t.device();
    e.requires_grad = t.requires_grad();
    e.conj = t.is_conj();
    e.neg = t.is_neg();
    return e;
  }

  bool matches(PyObject* o) const {
    if (none) return o == Py_None;
    if (Py_TYPE(o) != type) return false;
    const at::Tensor& t = THPVariable_Unpack(o);
    return t.layout() == c10::kStrided && t.scalar_type() == dtype && t.device() == device &&
           t.sizes().equals(sizes) && t.strides().equals(strides) &&
           t.requires_grad() == requires_grad && t.is_conj() == conj && t.is_neg() == neg;
  }
};

struct Slot {
  int cell;          // which kernel parameter
  int raw;           // which argument of the call
  int aligned;       // 1: must be 16-byte aligned, 0: must not be, -1: either
  bool copy;         // the kernel reads a contiguous copy of the argument, made per call
};

struct Out {
  int cell;                      // which kernel parameter takes its pointer
  std::vector<int64_t> shape;    // contiguous
  at::TensorOptions options;
  bool zero;                     // zero-filled (a kernel adds into it), else uninitialized
};

class Launch {
 public:
  // expect: the call's arguments (a tuple) the plan was made from; cells: every kernel
  // parameter's bits (pointers at the slots are overwritten per call; other cells, pointers to
  // buffers the caller keeps alive included, as given); slots: (cell, argument, alignment,
  // copy) per tensor parameter (copy: a contiguous copy of the argument is made per call and
  // its pointer taken, as the Python path's normalization copies an argument whose last
  // stride is not 1); outs: (cell, like, shape, zero) per output, a new contiguous tensor of
  // that shape whose pointer goes to that cell, in the dtype of argument `like` (-1:
  // float32), on the device of argument `device_like`, zero-filled where `zero` (a kernel
  // adds into it);
  // device: the CUDA ordinal of the context current when the plan was made; stream_fn(device
  // index) -> the current raw stream; fn: CUfunction; grid, block, smem: the launch shape.
  Launch(py::tuple expect, std::vector<uint64_t> cells, std::vector<std::array<int, 4>> slots,
         std::vector<std::tuple<int, int, std::vector<int64_t>, bool>> outs, int device_like,
         int device, py::object stream_fn, uint64_t fn, std::array<unsigned, 3> grid,
         unsigned block, unsigned smem)
      : cells_(std::move(cells)), device_like_(device_like), device_(device),
        stream_fn_(std::move(stream_fn)), fn_(fn), grid_(grid), block_(block), smem_(smem) {
    if (cells_.size() > kMaxCells) throw std::invalid_argument("too many kernel parameters");
    for (auto o : expect) expect_.push_back(Expect::of(o.ptr()));
    auto arg_ok = [&](int i) {
      return i >= 0 && i < static_cast<int>(expect_.size()) && !expect_[i].none;
    };
    auto cell_ok = [&](int c) { return c >= 0 && c < static_cast<int>(cells_.size()); };
    for (auto& s : slots) {
      if (!cell_ok(s[0]) || !arg_ok(s[1]))
        throw std::invalid_argument("slot out of range or on a None argument");
      slots_.push_back({s[0], s[1], s[2], s[3] != 0});
    }
    if (!arg_ok(device_like_)) throw std::invalid_argument("device_like out of range");
    if (outs.empty()) throw std::invalid_argument("no output");
    for (auto& o : outs) {
      int cell = std::get<0>(o), like = std::get<1>(o);
      if (!cell_ok(cell) || (like != -1 && !arg_ok(like)))
        throw std::invalid_argument("out cell or like out of range");
      auto dtype = like == -1 ? c10::ScalarType::Float : expect_[like].dtype;
      outs_.push_back({cell, std::get<2>(o),
                       at::TensorOptions().dtype(dtype).device(expect_[device_like_].device),
                       std::get<3>(o)});
    }
  }

  // The kernel parameters this call would launch with (out's pointer 0), or None on a
  // mismatch: what run() checks, without a GPU.
  py::object pack(py::tuple raw) const {
    std::array<uint64_t, kMaxCells> cells;
    if (!fill(raw, cells)) return py::none();
    std::vector<at::Tensor> copies;
    place_copies(raw, cells, copies);
    py::list l;
    for (size_t i = 0; i < cells_.size(); ++i) l.append(py::int_(cells[i]));
    return std::move(l);
  }

  // The outputs (new tensors: one, or a tuple of them), after launching the kernel on the
  // current stream; None where an argument, the current device or the driver call does not
  // match (nothing launched). poison: outputs are NaN-filled first (SSMGEN_POISON, as
  // backends/buffers.new does).
  py::object run(py::tuple raw, bool poison) const {
    std::array<uint64_t, kMaxCells> cells;
    if (!fill(raw, cells)) return py::none();
    const Driver& d = driver();
    if (d.launch == nullptr || d.ctx_device == nullptr) return py::none();
    int cur = -1;
    if (d.ctx_device(&cur) != 0 || cur != device_) return py::none();
    // made on the current stream, freed after the launch: the caching allocator reuses their
    // memory only in that stream's order
    std::vector<at::Tensor> copies;
    place_copies(raw, cells, copies);
    std::vector<at::Tensor> made;
    for (const Out& o : outs_) {
      made.push_back(o.zero ? at::zeros(o.shape, o.options) : at::empty(o.shape, o.options));
      if (poison && !o.zero) made.back().fill_(std::numeric_limits<double>::quiet_NaN());
      cells[o.cell] = reinterpret_cast<uint64_t>(made.back().data_ptr());
    }
    uint64_t stream = stream_fn_(expect_[device_like_].device.index()).cast<uint64_t>();
    std::array<void*, kMaxCells> params;
    for (size_t i = 0; i < cells_.size(); ++i) params[i] = &cells[i];
    int rc = d.launch(reinterpret_cast<void*>(fn_), grid_[0], grid_[1], grid_[2], block_, 1, 1,
                      smem_, reinterpret_cast<void*>(stream), params.data(), nullptr);
    if (rc != 0) return py::none();
    auto wrap = [](at::Tensor t) {
      return py::reinterpret_steal<py::object>(THPVariable_Wrap(std::move(t)));
    };
    if (made.size() == 1) return wrap(std::move(made[0]));
    py::tuple res(made.size());
    for (size_t i = 0; i < made.size(); ++i) res[i] = wrap(std::move(made[i]));
    return std::move(res);
  }

  size_t arity() const { return expect_.size(); }

 private:
  bool fill(const py::tuple& raw, std::array<uint64_t, kMaxCells>& cells) const {
    if (raw.size() != expect_.size()) return false;
    for (size_t i = 0; i < expect_.size(); ++i)
      if (!expect_[i].matches(raw[i].ptr())) return false;
    std::memcpy(cells.data(), cells_.data(), cells_.size() * sizeof(uint64_t));
    for (const Slot& s : slots_) {
      if (s.copy) continue;  // place_copies
      const at::Tensor& t = THPVariable_Unpack(raw[s.raw].ptr());
      auto p = reinterpret_cast<uint64_t>(t.data_ptr());
      if (s.aligned >= 0 && static_cast<int>((p & 15) == 0) != s.aligned) return false;
      cells[s.cell] = p;
    }
    for (const Out& o : outs_) cells[o.cell] = 0;
    return true;
  }

  // The copy slots' contiguous copies (new allocations: 16-byte aligned), outside autograd.
  void place_copies(const py::tuple& raw, std::array<uint64_t, kMaxCells>& cells,
                    std::vector<at::Tensor>& copies) const {
    at::NoGradGuard no_grad;
    for (const Slot& s : slots_) {
      if (!s.copy) continue;
      copies.push_back(THPVariable_Unpack(raw[s.raw].ptr()).contiguous());
      cells[s.cell] = reinterpret_cast<uint64_t>(copies.back().data_ptr());
    }
  }

  std::vector<Expect> expect_;
  std::vector<uint64_t> cells_;
  std::vector<Slot> slots_;
  std::vector<Out> outs_;
  int device_like_;
  int device_;
  py::object stream_fn_;
  uint64_t fn_;
  std::array<unsigned, 3> grid_;
  unsigned block_, smem_;
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  py::class_<Launch>(m, "Launch")
      .def(py::init<py::tuple, std::vector<uint64_t>, std::vector<std::array<int, 4>>,
                    std::vector<std::tuple<int, int, std::vector<int64_t>, bool>>, int, int,
                    py::object, uint64_t, std::array<unsigned, 3>, unsigned, unsigned>())
      .def("pack", &Launch::pack)
      .def("run", &Launch::run)
      .def_property_readonly("arity", &Launch::arity);
  m.def("driver_found", [] { return driver().launch != nullptr; });
  // the CUDA device of the driver's current context, -1 without one (what Launch.run compares
  // against the device its plan was made on)
  m.def("current_device", [] {
    const Driver& d = driver();
    int dev = -1;
    return d.ctx_device != nullptr && d.ctx_device(&dev) == 0 ? dev : -1;
  });
}
