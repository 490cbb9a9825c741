// run_scripted: the smallest libtorch consumer of pyflm's ops.
//
//   run_scripted LIBPYFLM_OPS MODEL.pt OUTPUT.pkl
//
// Loads the op library (its static initialisers register torch.ops.pyflm.*),
// then a TorchScript module whose forward() takes no arguments and calls pyflm
// ops, and writes forward()'s result with torch's pickler (readable by
// torch.load in Python), atomically. Used by the tests to show that the ops
// work from C++ exactly as from Python.
#include <dlfcn.h>

#include <torch/csrc/jit/serialization/pickle.h>
#include <torch/script.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: run_scripted LIBPYFLM_OPS MODEL.pt OUTPUT.pkl\n";
    return 2;
  }
  // The library must be loaded before the model: TorchScript resolves
  // pyflm:: ops while loading.
  if (dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    std::cerr << "run_scripted: cannot load op library: " << dlerror() << "\n";
    return 2;
  }
  try {
    const auto facts = c10::Dispatcher::singleton()
                           .findSchemaOrThrow("pyflm::build_info", "")
                           .typed<std::string()>()
                           .call();
    std::cerr << "pyflm ops: " << facts << "\n";

    torch::jit::Module module = torch::jit::load(argv[2]);
    module.eval();
    torch::NoGradGuard no_grad;
    const c10::IValue result = module.forward({});

    const std::vector<char> bytes = torch::jit::pickle_save(result);
    const std::string tmp = std::string(argv[3]) + ".tmp";
    {
      std::ofstream out(tmp, std::ios::binary);
      out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
      if (!out) throw std::runtime_error("cannot write " + tmp);
    }
    if (std::rename(tmp.c_str(), argv[3]) != 0) throw std::runtime_error("cannot rename to output");
  } catch (const std::exception& e) {  // c10::Error derives from std::exception
    std::cerr << "run_scripted: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
