"""RegNet's recipes (benchmarks/regnet.py) and the pieces of pycls's recipe they use.

The learning-rate schedule is compared with pycls's own `get_epoch_lr` step by step, the
optimizer with PyTorch's `torch.optim.SGD` (what pycls trains with), and each recipe with
the pycls model zoo row it claims to reproduce. tests/test_recipes.py builds and traces
every recipe abstractly.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import optimizers, registry
from benchmarks import regnet as regnet_benchmark
from benchmarks.config import ConfigError
from launch.runtime import Runtime, logical_axis_rules, make_mesh
from models.regnet import PYCLS_ZOO

torch = pytest.importorskip('torch')
pycls_config = pytest.importorskip('pycls.core.config')
pycls_optimizer = pytest.importorskip('pycls.core.optimizer')


def build_task(recipe, *overrides):
  config = registry.resolve('regnet', recipe, ['data.synthetic=True', 'data.prepare=""',
                                                *overrides])
  runtime = Runtime(make_mesh({'data': 1}, jax.devices()[:1]), logical_axis_rules('data_parallel'))
  return registry.load_benchmark('regnet').build_task(config, runtime)


def test_learning_rate_is_pyclss_epoch_by_epoch():
  """The digits recipe: 1,500 images at batch 64 is 23.4375 steps per epoch, so epoch
  boundaries fall between steps; every step must see pycls's rate for its epoch."""
  task = build_task('digits_cpu')
  pycls_config.reset_cfg()
  cfg, opt = pycls_config.cfg, task.config.optimizer
  cfg.OPTIM.LR_POLICY, cfg.OPTIM.BASE_LR = 'cos', opt.base_learning_rate
  cfg.OPTIM.MAX_EPOCH, cfg.OPTIM.WARMUP_EPOCHS = task.config.train.max_epochs, opt.warmup_epochs
  cfg.OPTIM.WARMUP_FACTOR = opt.warmup_factor
  schedule = jax.jit(task.learning_rate)
  for step in range(task.total_steps + 3):
    epoch = int(step * 64 // 1500)  # the epoch a step belongs to, in exact integers
    np.testing.assert_allclose(float(schedule(step)), pycls_optimizer.get_epoch_lr(epoch),
                               rtol=2e-6, atol=1e-6 * opt.base_learning_rate,  # float32
                               err_msg=f'step {step}, epoch {epoch}')
  assert float(schedule(0)) == pytest.approx(0.1 * 0.05)  # warmup starts at 0.1x
  assert float(schedule(5 * 1500 // 64 + 1)) < 0.05  # after warmup: the cosine itself


def test_sgd_matches_torch_sgd_with_nesterov_and_decay_on_every_parameter():
  """pycls: torch.optim.SGD(momentum=0.9, weight_decay=5e-5, nesterov=True) over all
  parameters, its rate set each epoch."""
  rng = np.random.default_rng(0)
  params = {'conv': {'kernel': rng.normal(size=(3, 3, 4, 8)).astype(np.float32)},
            'bn': {'scale': rng.normal(size=(8,)).astype(np.float32)}}
  grads = [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
           for _ in range(4)]
  rates = [0.1, 0.1, 0.05, 0.02]
  tx = optimizers.sgd_momentum(lambda step: jnp.asarray(rates)[step], momentum=0.9,
                               weight_decay=5e-5, nesterov=True, decay_all_parameters=True)
  ours, state = jax.tree.map(jnp.asarray, params), None
  state = tx.init(ours)
  for g in grads:
    updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, ours)
    ours = jax.tree.map(lambda p, u: p + u, ours, updates)
  tensors = [torch.tensor(params['conv']['kernel']), torch.tensor(params['bn']['scale'])]
  for t in tensors:
    t.requires_grad_(True)
  sgd = torch.optim.SGD(tensors, lr=rates[0], momentum=0.9, weight_decay=5e-5, nesterov=True)
  for rate, g in zip(rates, grads):
    for group in sgd.param_groups:
      group['lr'] = rate
    tensors[0].grad, tensors[1].grad = (torch.tensor(g['conv']['kernel']),
                                        torch.tensor(g['bn']['scale']))
    sgd.step()
  np.testing.assert_allclose(ours['conv']['kernel'], tensors[0].detach().numpy(), rtol=1e-6,
                             atol=1e-7)
  np.testing.assert_allclose(ours['bn']['scale'], tensors[1].detach().numpy(), rtol=1e-6,
                             atol=1e-7)


@pytest.mark.parametrize('name', sorted(PYCLS_ZOO))
def test_each_model_has_pyclss_recipe(name):
  zoo = PYCLS_ZOO[name]
  config = registry.resolve('regnet', name)
  assert config.model.name == name and config.model.num_classes == 1000
  assert config.train.global_batch_size == zoo.batch_size and config.train.max_epochs == 100
  assert config.optimizer.base_learning_rate == pytest.approx(0.1 * zoo.batch_size / 128)
  assert (config.optimizer.name, config.optimizer.schedule) == ('sgd', 'cosine')
  assert (config.optimizer.warmup_epochs, config.optimizer.warmup_factor) == (5.0, 0.1)
  assert (config.optimizer.weight_decay, config.optimizer.nesterov) == (5e-5, True)
  assert config.optimizer.decay_all_parameters and config.train.label_smoothing == 0.0
  assert config.train.target_accuracy == pytest.approx(zoo.top1 - 0.005)
  doc = registry.get_recipe('regnet', name).doc
  assert f'top-1 {100 * zoo.top1:.1f}%' in doc and f'{zoo.title}_dds_8gpu.yaml' in doc


def test_pod_recipes_follow_the_scaling_rule_and_fill_their_slices():
  from launch import chips  # pylint: disable=import-outside-toplevel
  pods = [r for r in registry.recipes('regnet') if r.startswith('tpu_')]
  assert len(pods) >= 3
  for name in pods:
    config = registry.resolve('regnet', name)
    batch = config.train.global_batch_size
    assert config.optimizer.base_learning_rate == pytest.approx(0.1 * batch / 128)
    topology = chips.parse_topology(config.topology)
    devices = topology.num_devices
    assert batch % devices == 0 and batch // devices >= 16, (name, batch, devices)
    assert f'({topology.num_chips} chips' in registry.get_recipe('regnet', name).doc


def test_hyperparameters_logged_for_the_rule_file():
  hyper = build_task('regnety_4_0gf').hyperparameters()
  assert hyper == {
      'opt_name': 'sgd', 'sgd_opt_base_learning_rate': 0.4, 'sgd_opt_momentum': 0.9,
      'sgd_opt_nesterov': True, 'sgd_opt_weight_decay': 5e-5,
      'sgd_opt_weight_decay_bn_and_bias': True, 'opt_learning_rate_decay_schedule': 'cosine',
      'opt_learning_rate_decay_epochs': 100, 'opt_learning_rate_warmup_epochs': 5.0,
      'opt_learning_rate_warmup_factor': 0.1, 'model_bn_span': 512, 'label_smoothing': 0.0,
      'regnet_model': 'regnety_4_0gf'}


def test_bad_optimizer_settings_name_what_is_valid():
  with pytest.raises(ConfigError, match="optimizer.schedule='step'; valid: polynomial, cosine"):
    build_task('digits_cpu', 'optimizer.schedule=step')
  with pytest.raises(ConfigError, match="optimizer.name=lars takes MLPerf's polynomial schedule"):
    build_task('digits_cpu', 'optimizer.name=lars')
  with pytest.raises(ConfigError, match='warmup_factor is for the cosine schedule'):
    build_task('digits_cpu', 'optimizer.schedule=polynomial')
  with pytest.raises(ConfigError, match="model.name='resnet50'; valid: regnetx_200mf"):
    build_task('digits_cpu', 'model.name=resnet50').create_model(None)


def test_regnet_recipes_are_listed(capsys):
  from launch import cli  # pylint: disable=import-outside-toplevel
  assert cli.main(['recipes', 'regnet']) == 0
  out = capsys.readouterr().out
  assert 'regnety_4_0gf ' in out and 'digits_cpu ' in out and 'tpu_v4_32_regnety_4_0gf_bs1024' in out
  assert 'folder_finetune ' in out
  assert out.count('\n') == 1 + len(PYCLS_ZOO) + 4 + 1 + 1  # + digits_cpu, folder_finetune
  assert regnet_benchmark.target_accuracy('regnety_4_0gf') == 0.789
