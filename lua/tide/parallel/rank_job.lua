-- The rank function of a recipe job (tide.parallel.recipe.launch passes this
-- file's path to tide.comm.launch: a rank thread loads it in its own state).
return function(c, arg) return require("tide.parallel.recipe").rank_job(c, arg) end
